"""One run, one executor: a run is claimed in its results folder before it starts, so that two drivers (two
``bench sweep`` commands, a re-launched Slurm array beside a live one) sharing a results folder never both run it.

The claim is an exclusive :mod:`filelock` lock on ``<results>/<run_id>/.claim.lock``, held for as long as the run
lasts, plus ``.claim.json`` naming its owner (host, process, start time) for messages. The operating system releases
the lock when its holder dies, so a crashed driver's claim is taken over at once, with no heartbeat to tune. A
process that finds the run claimed waits for the claim to be released, then reuses the run the owner recorded if it
succeeded (and runs it itself otherwise, as a resumed sweep would). A run that another driver finished after this one
planned it is reused the same way, so each run is executed once whichever driver reaches it first.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run.results import successful_run

CLAIM_LOCK = ".claim.lock"
CLAIM_OWNER = ".claim.json"
WAIT_NOTICE_S = 5.0
"""How long a process waits on another's claim before saying so in its log."""


def owner_of(run_dir: Path) -> dict[str, Any] | None:
    """Who claimed the run (as its owner wrote it), or None when nobody wrote a claim there."""
    try:
        return json.loads((run_dir / CLAIM_OWNER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def claimed_run(run_dir: Path, execute: Callable[[], Any], reuse: Callable[[dict[str, Any]], Any]) -> Any:
    """``execute()`` the run while holding its claim, or ``reuse(run_json)`` when a process holding (or having held)
    the claim recorded it as a success meanwhile."""
    import filelock

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(run_dir / CLAIM_LOCK))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        _wait(lock, run_dir)
    try:
        done = successful_run(run_dir)
        if done is not None:
            return reuse(done)
        (run_dir / CLAIM_OWNER).write_text(json.dumps({
            "host": socket.gethostname(), "pid": os.getpid(), "parent_pid": os.getppid(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
        return execute()
    finally:
        lock.release()


def _wait(lock, run_dir: Path) -> None:
    """Block until the owner releases the claim (finishes or dies), saying once who is being waited for."""
    import filelock

    try:
        lock.acquire(timeout=WAIT_NOTICE_S)
        return
    except filelock.Timeout:
        pass
    owner = owner_of(run_dir) or {}
    print(f"run {run_dir.name} is being run by {owner.get('host', '?')} (pid {owner.get('pid', '?')}, since "
          f"{owner.get('since', '?')}); waiting for it", flush=True)
    started = time.monotonic()
    lock.acquire()
    print(f"run {run_dir.name}: claim released after {time.monotonic() - started:.0f} s", flush=True)
