"""STT throughput of voxline on Ray Serve with 1 and with 2 STT replicas.

For each replica count (interleaved over rounds: 1, 2, 1, 2...), ``voxline serve --ray local``
starts a single-node Ray cluster with the stages deployed and the API as ingress; after two
warm-up requests, ``--requests`` transcriptions of a spoken clip (two sentences) go through the
ingress, ``--concurrency`` at a time, and the completed requests per second are recorded. Each
STT replica decodes with one CPU thread (``VOXLINE_STT__CPU_THREADS=1``), so on a 2-core machine
two replicas can use both cores::

    python -m benchmarks.ray_throughput --rounds 2 --requests 24 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.longform import SENTENCES, synthesize_piece
from benchmarks.server_proc import wait_ready
from pipeline.audio import encode_wav
from pipeline.types import AudioChunk


def _clip() -> AudioChunk:
    first = synthesize_piece(SENTENCES[0], "piper:1.0")
    second = synthesize_piece(SENTENCES[1], "piper:1.0")
    return AudioChunk(np.concatenate([first.samples, second.samples]), 16_000)


def _serve(replicas: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "VOXLINE_RAY__STT__NUM_REPLICAS": str(replicas),
        "VOXLINE_STT__CPU_THREADS": "1",
        "VOXLINE_DEMO_ENABLED": "false",
        "VOXLINE_STATE__DATA_DIR": str(log.parent / f"state-{port}"),
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--ray", "local", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, log, poll_s=0.5, timeout_s=300)
    return proc, url


async def _load(url: str, clip: bytes, requests: int, concurrency: int) -> float:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one() -> None:
            async with slots:
                response = await client.post(
                    "/v1/audio/transcriptions",
                    data={"model": "whisper-1"},
                    files={"file": ("clip.wav", clip, "audio/wav")},
                )
                response.raise_for_status()

        for _ in range(2):  # warm-up: every replica has run once or more
            await asyncio.gather(*(one() for _ in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_throughput")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("ray-throughput"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    audio = _clip()
    clip = encode_wav(audio)
    results: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for replicas in (1, 2):
            proc, url = _serve(replicas, args.out / "server.log")
            try:
                rate = asyncio.run(_load(url, clip, args.requests, args.concurrency))
            finally:
                os.killpg(proc.pid, signal.SIGINT)  # serve deletes the app, ray shuts down
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            results[replicas].append(round(rate, 3))
            print(f"{replicas} STT replica(s): {rate:.2f} requests/s", flush=True)
    summary = {
        "clip_seconds": round(audio.duration, 2),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "requests_per_s": results,
        "ratio_2_vs_1": round(
            sum(results[2]) / len(results[2]) / (sum(results[1]) / len(results[1])), 3
        ),
    }
    (args.out / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
