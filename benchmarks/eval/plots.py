"""PNG figures drawn from a scorecard alone (so any scorecard.json can be redrawn).

- ``stt_conditions.png``: WER and CER per condition: where the recognizer breaks (noise, speed,
  a voice) beside its real-speech numbers.
- ``tts_checks.png``: each sentence's seconds per character against the allowed band, failed
  clips marked: a length bug shows as every point outside the band.
- ``answers_similarity.png``: each reply's similarity to its reference, the threshold, and
  which replies also contained the answer: how far the semantic match is from the word match.
- ``latency_budgets.png``: each budgeted latency beside its budget.

matplotlib is imported here only, with the Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ok(card: dict[str, Any], suite: str) -> dict[str, Any] | None:
    result = card.get("suites", {}).get(suite)
    return result if result and result.get("status") == "ok" else None


def stt_conditions(card: dict[str, Any], path: Path) -> Path | None:
    """WER/CER per condition; ``None`` when the stt suite did not run."""
    suite = _ok(card, "stt")
    if suite is None:
        return None
    metrics = suite["metrics"]
    conditions = ["all"] + [m.split(":", 1)[1] for m in metrics if m.startswith("wer:")]
    wer = [metrics["wer" if c == "all" else f"wer:{c}"]["value"] for c in conditions]
    cer = [metrics["cer" if c == "all" else f"cer:{c}"]["value"] for c in conditions]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(conditions) + 2), 4.2))
    xs = range(len(conditions))
    ax.bar([x - 0.2 for x in xs], wer, 0.4, label="WER")
    ax.bar([x + 0.2 for x in xs], cer, 0.4, label="CER")
    ax.set_xticks(list(xs), conditions, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel("error rate")
    ax.set_title("STT error rates per condition")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def tts_checks(card: dict[str, Any], path: Path) -> Path | None:
    """Seconds per character per sentence within the allowed band; ``None`` without tts."""
    suite = _ok(card, "tts")
    if suite is None:
        return None
    rows = suite["details"]["sentences"]
    low, high = suite["details"]["limits"]["seconds_per_char"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2), 4.0))
    xs = list(range(len(rows)))
    ok = [r["seconds_per_char"] if not r["failures"] else None for r in rows]
    bad = [r["seconds_per_char"] if r["failures"] else None for r in rows]
    ax.axhspan(low, high, color="green", alpha=0.1, label="allowed")
    ax.scatter(xs, ok, marker="o", label="passed")
    ax.scatter(xs, bad, marker="x", color="red", label="failed a check")
    ax.set_xticks(xs, [r["id"] for r in rows], rotation=60, fontsize="x-small")
    ax.set_ylabel("seconds per character")
    ax.set_title("TTS clip checks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def answers_similarity(card: dict[str, Any], path: Path) -> Path | None:
    """Similarity per reply with the threshold; ``None`` without answers."""
    suite = _ok(card, "answers")
    if suite is None:
        return None
    items = suite["details"]["items"]
    threshold = suite["details"]["semantic_threshold"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.25 * len(items) + 2), 4.0))
    xs = list(range(len(items)))
    colors = ["tab:green" if i["contains"] else "tab:gray" for i in items]
    ax.bar(xs, [i["similarity"] for i in items], color=colors)
    ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xticks(xs, [i["id"] for i in items], rotation=90, fontsize="x-small")
    ax.set_ylim(0, 1)
    ax.set_ylabel("cosine similarity to the reference")
    ax.set_title(
        "answer-focused similarity (green: the reply contains the answer)", fontsize="medium"
    )
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def latency_budgets(card: dict[str, Any], path: Path) -> Path | None:
    """Budgeted latencies beside their budgets; ``None`` without latency."""
    suite = _ok(card, "latency")
    if suite is None or not suite.get("budgets"):
        return None
    names = list(suite["budgets"])
    values = [suite["budgets"][n]["value"] for n in names]
    budgets = [suite["budgets"][n]["budget"] for n in names]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.2))
    xs = list(range(len(names)))
    colors = ["tab:green" if v <= b else "tab:red" for v, b in zip(values, budgets, strict=True)]
    ax.bar(xs, values, 0.6, color=colors, label="measured")
    ax.scatter(xs, budgets, marker="_", s=600, color="black", label="budget")
    ax.set_xticks(xs, names, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel("ms")
    ax.set_title("latency against budget (red: over)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def write_plots(card: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw every figure the scorecard has data for; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = [
        stt_conditions(card, out_dir / "stt_conditions.png"),
        tts_checks(card, out_dir / "tts_checks.png"),
        answers_similarity(card, out_dir / "answers_similarity.png"),
        latency_budgets(card, out_dir / "latency_budgets.png"),
    ]
    return [p for p in drawn if p is not None]
