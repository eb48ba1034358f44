"""PNG plots drawn from a results object alone, so they can be redrawn from any results.json.

- ``latency_cdf.png``: the cumulative distribution of every stage latency, one panel per
  scenario: where a tail is, and which stage owns it.
- ``turn_breakdown.png``: per turn, the streaming pipeline's time to first audio stacked by stage
  beside the naive pipeline's stacked by stage: what streaming saves, turn by turn.
- ``v2v_concurrency.png``: V2V p50 and p95 against concurrent sessions, with the SLO line.

matplotlib is imported here only, with the Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_CDF_METRICS = (
    "v2v_ms",
    "stt_ms",
    "llm_ttft_ms",
    "first_phrase_ms",
    "tts_ttfb_ms",
    "endpoint_ms",
    "naive_total_ms",
    "llm_total_ms",
    "tts_total_ms",
)
_STREAM_PARTS = (
    ("stt_ms", "STT final"),
    ("first_phrase_ms", "LLM first phrase"),
    ("tts_ttfb_ms", "TTS first audio"),
    ("overhead_ms", "overhead"),
)
_NAIVE_PARTS = (
    ("naive_stt_ms", "naive STT"),
    ("naive_llm_ms", "naive LLM (whole reply)"),
    ("naive_tts_ms", "naive TTS (whole reply)"),
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(results: dict[str, Any], path: Path) -> Path | None:
    """Latency CDFs per scenario; ``None`` when no scenario has a latency."""
    panels = {
        name: {m: v for m, v in raw.items() if m in _CDF_METRICS and v}
        for name, raw in results.get("raw", {}).items()
    }
    panels = {name: metrics for name, metrics in panels.items() if metrics}
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, metrics) in zip(flat, panels.items(), strict=False):
        for metric, values in metrics.items():
            xs = sorted(values)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step([xs[0], *xs], [0.0, *ys], where="post", label=metric)
        ax.set_title(name)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of runs")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def turn_breakdown(results: dict[str, Any], path: Path, scenario: str = "turn") -> Path | None:
    """Stacked per-stage bars per turn (streaming beside naive); ``None`` without turn rows."""
    rows = results.get("rows", {}).get(scenario) or []
    rows = [r for r in rows if r.get("v2v_ms") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2) + 2.5, 4.5))
    xs = list(range(len(rows)))
    width = 0.4
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars = ((-width / 2, _STREAM_PARTS, None), (width / 2, _NAIVE_PARTS, "//"))
    for offset, parts, hatch in bars:
        bottom = [0.0] * len(rows)
        for i, (metric, label) in enumerate(parts):
            heights = [max(0.0, float(r.get(metric) or 0.0)) for r in rows]
            ax.bar(
                [x + offset for x in xs],
                heights,
                width,
                bottom=bottom,
                label=label,
                color=colors[(i + (4 if hatch else 0)) % len(colors)],
                hatch=hatch,
            )
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(xs, [str(i + 1) for i in xs])
    ax.set_title(f"{scenario}: time to first audio by stage")
    ax.set_xlabel("turn (left: streaming; right, hatched: naive sequential)")
    ax.set_ylabel("ms")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def v2v_concurrency(results: dict[str, Any], path: Path, scenario: str = "load") -> Path | None:
    """V2V p50/p95 against concurrent sessions; ``None`` when ``load`` did not run."""
    details = results.get("details", {}).get(scenario) or {}
    levels = [lv for lv in details.get("levels", []) if lv.get("v2v_p50_ms") is not None]
    if not levels:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [lv["sessions"] for lv in levels]
    ax.plot(ns, [lv["v2v_p50_ms"] for lv in levels], marker="o", label="V2V p50")
    ax.plot(ns, [lv["v2v_p95_ms"] for lv in levels], marker="s", label="V2V p95")
    slo = details.get("slo_v2v_p95_ms")
    if slo is not None:
        ax.axhline(slo, color="red", linestyle="--", label=f"SLO p95 {slo:.0f} ms")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("V2V ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw every plot the results have data for into ``out_dir``; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [latency_cdf(results, out_dir / "latency_cdf.png")]
    for name in results.get("scenarios", {}):
        base, _, label = name.partition("@")
        suffix = f"-{label}" if label else ""
        if base == "turn":
            written.append(turn_breakdown(results, out_dir / f"turn_breakdown{suffix}.png", name))
        elif base == "load":
            written.append(v2v_concurrency(results, out_dir / f"v2v_concurrency{suffix}.png", name))
    return [p for p in written if p is not None]
