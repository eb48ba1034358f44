"""A long recording built here, for long-audio transcription jobs: its audio and what is said.

Real speech (every licensed real recording in ``tests/data``: the CMU ARCTIC clip and the
LibriVox and CMU clips of ``tests/data/real/manifest.tsv``; one utterance in four) and
synthetic speech (the packaged Piper voice at three speaking rates, and espeak-ng's English
voices when ``espeak-ng`` is installed) are laid end to end with pauses of 0.3 to 1.5 s and a
faint noise floor, as a recorded talk has, until the wanted length. Every
piece's text and position are kept, so the job's transcript can be scored against the truth,
and so can the pieces transcribed one by one (the baseline the job must match).

Nothing is committed but this script: ``python -m benchmarks.longform build --minutes 30``
writes the wav and its JSON reference (a seeded random order: the same file every time).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.server_proc import wait_ready
from pipeline.audio import encode_wav, resample
from pipeline.settings import AudioLimits
from pipeline.types import AudioChunk

RATE = 16_000
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
ARCTIC = DATA / "arctic_a0007.wav"
ARCTIC_TEXT = "And you always want to see it in the superlative degree."


def real_clips() -> list[tuple[str, Path]]:
    """``(transcript, file)`` of every real recording in ``tests/data`` (the ARCTIC clip, and
    those of ``real/manifest.tsv`` where that set exists)."""
    clips = [(ARCTIC_TEXT, ARCTIC.resolve())]
    manifest = DATA / "real" / "manifest.tsv"
    if manifest.is_file():
        for line in manifest.read_text().splitlines()[1:]:
            name, _, text = line.split("\t")
            path = (manifest.parent / name).resolve()
            if path != ARCTIC.resolve():
                clips.append((text, path))
    return clips


SENTENCES = (
    "The quarterly report shows that sales grew by twelve percent in the northern region.",
    "Please remember to close the windows before you leave the office tonight.",
    "Our next speaker has spent twenty years studying the migration of birds.",
    "The bridge was closed for repairs, so we took the long road through the valley.",
    "She opened the letter slowly and read it twice before saying a word.",
    "Fresh bread from the bakery on the corner is the best way to start the day.",
    "The committee will vote on the new budget at the end of the month.",
    "A small boat drifted across the lake while the sun went down behind the hills.",
    "If the train is late again, we will miss the beginning of the concert.",
    "The engineers tested the engine for three hours without a single failure.",
    "Children in the village learn to swim in the river every summer.",
    "He packed a warm coat, two books and a map of the mountains.",
    "The museum opens at nine and closes at five on weekdays.",
    "Heavy rain is expected tomorrow, with strong winds along the coast.",
    "Our team finished the project two weeks ahead of schedule.",
    "The old library has more than a million books and a quiet reading room.",
    "Turn left at the second traffic light and park behind the blue building.",
    "The doctor said that a short walk every day is good for the heart.",
    "Tickets for the football match sold out within an hour.",
    "The farmer planted corn in the spring and harvested it in the autumn.",
    "We need more chairs in the meeting room for the visitors from Berlin.",
    "The cat slept on the warm windowsill for most of the afternoon.",
    "A new hospital will be built on the edge of the city next year.",
    "The pilot announced that we would land twenty minutes early.",
    "My grandmother grows tomatoes, beans and herbs in her garden.",
    "The students asked many questions after the lecture on volcanoes.",
    "Water boils at one hundred degrees at sea level.",
    "The shop on the main street sells shoes, hats and umbrellas.",
    "After dinner we played cards and talked until midnight.",
    "The company plans to hire forty new workers in the factory.",
    "A gentle breeze carried the smell of the sea into the kitchen.",
    "The orchestra played a symphony that lasted almost an hour.",
    "He fixed the broken chair with glue and a few small nails.",
    "The hikers reached the top of the mountain just before noon.",
    "Our neighbours are moving to a smaller house near the park.",
    "The teacher wrote the answer on the board and asked us to copy it.",
    "The river flooded the fields after a week of heavy rain.",
    "She bought a red bicycle and rides it to work every morning.",
    "The market is busy on Saturdays, when farmers bring fresh vegetables.",
    "We watched the stars from the roof until the clouds came in.",
)


@dataclass(frozen=True, slots=True)
class Piece:
    """One utterance of the recording: what is said, by which voice, where."""

    text: str
    voice: str
    start: float
    end: float


@functools.cache
def _piper():  # type: ignore[no-untyped-def]
    from piper import PiperVoice

    from models.weights import packaged_path

    return PiperVoice.load(str(packaged_path("piper-joe-medium", stage="tts")))


@functools.cache
def synthesize_piece(text: str, voice: str) -> AudioChunk:
    if voice.startswith("piper"):
        from piper import SynthesisConfig

        scale = float(voice.split(":")[1])
        chunks = list(_piper().synthesize(text, SynthesisConfig(length_scale=scale)))
        samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return resample(AudioChunk(samples, chunks[0].sample_rate), RATE)
    if voice.startswith("real:"):
        return _decode((DATA / voice[5:]).read_bytes())
    name = voice.split(":")[1]
    wav = subprocess.run(
        ["espeak-ng", "-v", name, "-s", "155", "--stdout", text], check=True, capture_output=True
    ).stdout
    return _decode(wav)


def _decode(data: bytes) -> AudioChunk:
    from pipeline.audio import decode_audio

    return decode_audio(data, sample_rate=RATE, limits=AudioLimits())


def voices() -> list[str]:
    """The synthetic voices available here (espeak-ng's only when it is installed)."""
    found = ["piper:0.9", "piper:1.0", "piper:1.15"]
    if shutil.which("espeak-ng"):
        found += ["espeak:en-us", "espeak:en-gb"]
    return found


def build_recording(seconds: float, *, seed: int = 0) -> tuple[AudioChunk, list[Piece]]:
    """About ``seconds`` of speech and pauses (it ends after the piece that crosses it)."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    synthetic = voices()
    parts: list[np.ndarray] = []
    pieces: list[Piece] = []
    position = 0
    order = list(SENTENCES)
    real: list[tuple[str, Path]] = []
    while position < seconds * RATE:
        if len(pieces) % 4 == 3:
            if not real:
                real = real_clips()
                rng.shuffle(real)
            text, path = real.pop()
            voice = f"real:{path.relative_to(DATA.resolve())}"
        else:
            if not order:
                order = list(SENTENCES)
            text = order.pop(rng.randrange(len(order)))
            voice = rng.choice(synthetic)
        audio = synthesize_piece(text, voice).samples
        gap = np.zeros(int(rng.uniform(0.3, 1.5) * RATE), np.float32)
        pieces.append(
            Piece(
                text, voice, (position + len(gap)) / RATE, (position + len(gap) + len(audio)) / RATE
            )
        )
        parts += [gap, audio]
        position += len(gap) + len(audio)
    parts.append(np.zeros(int(0.5 * RATE), np.float32))
    samples = np.concatenate(parts)
    samples += noise.normal(0.0, 10 ** (-65 / 20), len(samples)).astype(np.float32)  # -65 dBFS
    return AudioChunk(samples.astype(np.float32), RATE), pieces


def piece_audio(recording: AudioChunk, piece: Piece, pad: float = 0.2) -> AudioChunk:
    """One piece cut out of the recording (with a little of the pause around it)."""
    start = max(0, int((piece.start - pad) * RATE))
    end = min(len(recording.samples), int((piece.end + pad) * RATE))
    return AudioChunk(recording.samples[start:end], RATE)


def _start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``voxline serve`` on a free port (as users run it); returns it once ``/readyz`` is 200."""
    import os
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port)],
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
        )
    wait_ready(proc, url, log, poll_s=0.2, timeout_s=None)
    return proc, url


def measure(
    recording: AudioChunk, pieces: list[Piece], *, kill_at: float, work: Path
) -> dict[str, object]:
    """Transcribe ``recording`` as a job, ``kill -9`` the server once the job's progress passes
    ``kill_at`` (0: never), resume it on a new server; then transcribe every piece on its own
    (the baseline). Returns the WERs and times."""
    import os
    import signal
    import time

    import httpx

    from benchmarks.stats import corpus_wer, wer
    from client.jobs import JobsClient

    work.mkdir(parents=True, exist_ok=True)
    audio = work / "recording.wav"
    audio.write_bytes(encode_wav(recording))
    env = {"VOXLINE_STATE__DATA_DIR": str(work / "state"), "VOXLINE_DEMO_ENABLED": "false"}
    log = work / "server.log"
    proc, url = _start_server(env, log)
    restart_s = 0.0
    killed_at = None
    try:
        with JobsClient(url) as client:
            start = time.perf_counter()
            job = client.submit("transcription", file=audio)
            while kill_at > 0:
                seen = client.get(job["id"])
                if seen["progress"] >= kill_at:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed_at = seen["progress"]
                    break
                time.sleep(0.2)
        if killed_at is not None:
            begin = time.perf_counter()
            proc, url = _start_server(env, log)
            restart_s = time.perf_counter() - begin
        with JobsClient(url) as client:
            done = client.wait(job["id"], poll_s=0.5)
            job_s = time.perf_counter() - start
            text = json.loads(client.result(job["id"]))["text"]
        begin = time.perf_counter()
        hypotheses = []
        for piece in pieces:
            clip = encode_wav(piece_audio(recording, piece))
            response = httpx.post(
                f"{url}/v1/audio/transcriptions",
                data={"model": "whisper-1"},
                files={"file": ("piece.wav", clip, "audio/wav")},
                timeout=300,
            )
            hypotheses.append(response.json()["text"])
        baseline_s = time.perf_counter() - begin
    finally:
        proc.terminate()
        proc.wait()
    reference = " ".join(p.text for p in pieces)
    return {
        "audio_minutes": round(recording.duration / 60, 2),
        "pieces": len(pieces),
        "status": done["status"],
        "chunks": done["chunks"],
        "attempts": done["attempts"],
        "killed_at_progress": killed_at,
        "job_wall_s": round(job_s, 1),
        "restart_s": round(restart_s, 1),
        "job_wer": round(wer(reference, text), 4),
        "baseline_wer": round(
            corpus_wer(zip([p.text for p in pieces], hypotheses, strict=True)), 4
        ),
        "baseline_wall_s": round(baseline_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.longform build|measure --minutes 30``"""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.longform")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the recording and its reference")
    build.add_argument("--minutes", type=float, default=30.0)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", type=Path, default=Path("longform.wav"))
    run = sub.add_parser(
        "measure", help="transcribe it as a job with a kill -9, and piece by piece"
    )
    run.add_argument("--minutes", type=float, default=30.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--kill-at", type=float, default=0.5, help="progress at which to kill (0: never)"
    )
    run.add_argument("--work", type=Path, default=Path("longform-run"))
    args = parser.parse_args(argv)
    recording, pieces = build_recording(args.minutes * 60, seed=args.seed)
    if args.command == "measure":
        result = measure(recording, pieces, kill_at=args.kill_at, work=args.work)
        (args.work / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    args.out.write_bytes(encode_wav(recording))
    reference = args.out.with_suffix(".json")
    reference.write_text(json.dumps([asdict(p) for p in pieces], indent=1))
    print(f"{args.out}: {recording.duration / 60:.1f} min, {len(pieces)} pieces; {reference}")


if __name__ == "__main__":
    main()
