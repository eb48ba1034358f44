"""A second process for the store's multi-process tests: ``python -m tests.store.worker CMD URL``.

Commands (each prints its results as one JSON line, then exits, unless said otherwise):

- ``hit URL SCOPE LIMIT N NOW``: N rate-limit hits on the frozen clock NOW; prints the
  number allowed.
- ``acquire URL SCOPE LIMIT N NOW``: tries to acquire N leases (holders ``<pid>-<i>``);
  prints the number acquired.
- ``charge URL REQUEST_ID``: appends one charge, prints ``"stored"``, then sleeps until killed.
- ``open URL``: opens (migrating) the store; prints the schema version found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.ledger import Charge
from store import Store
from store.migrations import LATEST

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m tests.store.worker ARGS...`` on this checkout, pipes open."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.worker", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )


def main(argv: list[str]) -> None:
    command, url, *args = argv
    if command == "open":
        with Store.open(url=url):
            print(json.dumps(LATEST), flush=True)
        return
    if command in {"hit", "acquire"}:
        scope, limit, count, now = args[0], int(args[1]), int(args[2]), float(args[3])
        with Store.open(url=url, clock=lambda: now) as store:
            print("ready", flush=True)
            sys.stdin.readline()  # both processes start hitting together
            if command == "hit":
                done = sum(store.rate_limits.hit(scope, limit).allowed for _ in range(count))
            else:
                done = sum(
                    store.leases.acquire(scope, f"{os.getpid()}-{i}", ttl_s=60, limit=limit)
                    is not None
                    for i in range(count)
                )
        print(json.dumps(done), flush=True)
        return
    if command == "charge":
        store = Store.open(url=url)
        charge = Charge(at=time.time(), request_id=args[0], backend="whisper:cpu", stage="stt")
        store.charges.append(charge, key_id="key_1")
        print(json.dumps("stored"), flush=True)
        time.sleep(600)  # the test kills us here
        return
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
