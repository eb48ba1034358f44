"""Write random GPT-SoVITS weights into an upstream checkout, for the opt-in ``gpt_sovits`` tests.

Upstream's pretrained weights live on a model hub this project cannot reach (and must not fetch
in tests), yet the adapter has to be exercised against the real upstream code: its loaders,
version detection, text front end, streaming and stop behaviour. Random weights of the right
shapes, in the file formats upstream reads, are enough for that: the speech is noise, but every
code path runs. The models are built from upstream's own classes and config files, imported at run
time from the checkout, so this script holds none of upstream's code.

Run it with the GPT-SoVITS venv's interpreter, from anywhere::

    $GPT_SOVITS_PYTHON tests/gpt_sovits_random_weights.py $GPT_SOVITS_HOME --max-sec 1

It needs the ``config.json`` / tokenizer files of chinese-hubert-base and
chinese-roberta-wwm-ext-large already in ``GPT_SoVITS/pretrained_models/`` (docs/gpt_sovits.md
says where they come from). Files that exist are kept unless ``--force`` is given, so real weights
are never overwritten by accident.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

PRETRAINED = Path("GPT_SoVITS/pretrained_models")
HUBERT_DIR = PRETRAINED / "chinese-hubert-base"
BERT_DIR = PRETRAINED / "chinese-roberta-wwm-ext-large"
SV_CKPT = PRETRAINED / "sv/pretrained_eres2netv2w24s4ep4.ckpt"

# Where upstream's TTS_Config looks when no weights path is configured (its default_configs).
S1_PATHS = {
    "v2": PRETRAINED / "gsv-v2final-pretrained/s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt",
    "v2Pro": PRETRAINED / "s1v3.ckpt",
}
S2_PATHS = {
    "v2": PRETRAINED / "gsv-v2final-pretrained/s2G2333k.pth",
    "v2Pro": PRETRAINED / "v2Pro/s2Gv2Pro.pth",
}
S2_CONFIGS = {"v2": "GPT_SoVITS/configs/s2.json", "v2Pro": "GPT_SoVITS/configs/s2v2Pro.json"}
S1_CONFIG = "GPT_SoVITS/configs/s1longer-v2.yaml"

# Upstream tells SoVITS versions apart by the first two bytes of the file: a plain torch zip
# starts with b"PK" (read as v1/v2 by size and embedding rows); v2Pro files start with b"05".
V2PRO_HEADER = b"05"


def _import_upstream(home: Path) -> None:
    """Make the checkout importable the way upstream's own entry points do."""
    os.chdir(home)  # upstream resolves config and model paths against the working directory
    for sub in ("GPT_SoVITS/eres2net", "GPT_SoVITS", "."):
        path = str(home / sub)
        if path not in sys.path:
            sys.path.insert(0, path)


def _save_with_header(obj: Any, path: Path, header: bytes | None) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    if header is not None:
        data = header + data[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _half_state(module: Any, skip: str | None = None) -> dict[str, Any]:
    """Upstream stores its GPT and SoVITS weights in fp16; loading upcasts them."""
    return {
        k: (v.half() if v.is_floating_point() else v)
        for k, v in module.state_dict().items()
        if skip is None or skip not in k
    }


def write_s1(path: Path, max_sec: float) -> None:
    """The GPT (text to semantic tokens) checkpoint: ``{'weight', 'config', 'info'}``."""
    import yaml
    from AR.models.t2s_lightning_module import Text2SemanticLightningModule

    with open(S1_CONFIG, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    # A random model never emits EOS; upstream stops after 50 * max_sec tokens per segment.
    config["data"]["max_sec"] = max_sec
    module = Text2SemanticLightningModule(config, "****", is_train=False)
    payload = {"weight": _half_state(module), "config": config, "info": "random weights"}
    _save_with_header(payload, path, header=None)


def write_s2(path: Path, version: str) -> None:
    """The SoVITS checkpoint: ``{'weight' (no enc_q), 'config', 'info'}``, version header first."""
    import torch
    from module.models import SynthesizerTrn

    with open(S2_CONFIGS[version], encoding="utf-8") as f:
        hps = json.load(f)
    hps["model"]["version"] = version
    hps["model"]["semantic_frame_rate"] = "25hz"
    data = hps["data"]
    model = SynthesizerTrn(
        data["filter_length"] // 2 + 1,
        hps["train"]["segment_size"] // data["hop_length"],
        n_speakers=data["n_speakers"],
        **copy.deepcopy(hps["model"]),
    )
    # The VQ codebook is a zero buffer until k-means runs in training; with zeros every frame
    # decodes to the same vector and the audio is silent.
    codebook = model.quantizer.vq.layers[0]._codebook
    with torch.no_grad():
        codebook.embed.normal_()
        codebook.embed_avg.copy_(codebook.embed)
        codebook.inited.fill_(1)
    payload = {"weight": _half_state(model, skip="enc_q"), "config": hps, "info": "random weights"}
    _save_with_header(payload, path, header=V2PRO_HEADER if "Pro" in version else None)


def write_hubert(directory: Path) -> None:
    """chinese-hubert-base as safetensors, from the config.json already in ``directory``."""
    from transformers import HubertConfig, HubertModel

    model = HubertModel(HubertConfig.from_pretrained(directory))
    model.half().save_pretrained(directory, safe_serialization=True)


def write_bert(directory: Path) -> None:
    """chinese-roberta-wwm-ext-large (325M parameters, 651 MB in fp16) for the text front end."""
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig.from_pretrained(directory))
    model.half().save_pretrained(directory, safe_serialization=True)


def write_sv(path: Path) -> None:
    """The speaker-verification model v2Pro conditions on: a plain ERes2NetV2 state dict."""
    from ERes2NetV2 import ERes2NetV2

    model = ERes2NetV2(baseWidth=24, scale=4, expansion=4)
    _save_with_header(model.state_dict(), path, header=None)


def _plan(versions: list[str], max_sec: float) -> list[tuple[Path, Callable[[], None]]]:
    jobs: list[tuple[Path, Callable[[], None]]] = [
        (HUBERT_DIR / "model.safetensors", partial(write_hubert, HUBERT_DIR)),
        (BERT_DIR / "model.safetensors", partial(write_bert, BERT_DIR)),
    ]
    for version in versions:
        jobs.append((S1_PATHS[version], partial(write_s1, S1_PATHS[version], max_sec)))
        jobs.append((S2_PATHS[version], partial(write_s2, S2_PATHS[version], version)))
    if "v2Pro" in versions:
        jobs.append((SV_CKPT, partial(write_sv, SV_CKPT)))
    return jobs


def main(argv: list[str] | None = None) -> int:
    """Write the files; print one line per file with its size and the seconds it took."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("home", type=Path, help="the GPT-SoVITS checkout (GPT_SOVITS_HOME)")
    parser.add_argument("--versions", nargs="+", choices=sorted(S2_PATHS), default=sorted(S2_PATHS))
    parser.add_argument(
        "--max-sec",
        type=float,
        default=1.0,
        help="the GPT's max_sec: each text segment stops after 50 * max_sec tokens, i.e. "
        "2 * max_sec seconds of audio (a random model never ends one earlier)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    home = args.home.resolve()
    needs = (HUBERT_DIR / "config.json", BERT_DIR / "config.json", BERT_DIR / "tokenizer.json")
    for needed in needs:
        if not (home / needed).is_file():
            parser.error(f"{home / needed} is missing (see docs/gpt_sovits.md)")
    _import_upstream(home)

    import torch

    torch.manual_seed(args.seed)
    for path, write in _plan(args.versions, args.max_sec):
        if path.exists() and not args.force:
            print(f"kept     {path}")
            continue
        start = time.perf_counter()
        write()
        size_mb = path.stat().st_size / 1e6
        print(f"wrote    {path} ({size_mb:.1f} MB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
