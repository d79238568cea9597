"""protos.sched: the helper threads of a service process become SCHED_BATCH, the caller not."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling only")

ROOT = Path(__file__).resolve().parents[2]

# NOTE: in a child process: it changes the policy of every other thread of its process
CHILD = """
import os, threading
from protos.sched import batch_other_threads
stop = threading.Event()
helper = threading.Thread(target=stop.wait)
helper.start()
changed = batch_other_threads()
print(changed, os.sched_getscheduler(helper.native_id) == os.SCHED_BATCH,
      os.sched_getscheduler(threading.get_native_id()) == os.SCHED_BATCH, batch_other_threads())
stop.set()
"""


def test_other_threads_become_batch_and_the_caller_keeps_its_policy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    changed, helper_batch, caller_batch, again = done.stdout.split()
    assert int(changed) >= 1 and helper_batch == "True" and caller_batch == "False"
    assert again == "0"  # already batch: nothing left to change


# NOTE: the helper takes the engine loop's name the way EngineLoop names its thread (prctl)
KEEP_CHILD = """
import ctypes, os, threading
from protos.sched import batch_other_threads
stop = threading.Event()
def engine():
    ctypes.CDLL(None).prctl(15, b"engine-loop", 0, 0, 0)
    named.set()
    stop.wait()
named = threading.Event()
kept, other = threading.Thread(target=engine), threading.Thread(target=stop.wait)
kept.start(), other.start(), named.wait()
changed = batch_other_threads(keep=("engine-loop",))
print(changed, os.sched_getscheduler(kept.native_id) == os.SCHED_BATCH,
      os.sched_getscheduler(other.native_id) == os.SCHED_BATCH)
stop.set()
"""


def test_threads_named_to_keep_keep_their_policy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", KEEP_CHILD], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    changed, kept_batch, other_batch = done.stdout.split()
    assert int(changed) >= 1 and kept_batch == "False" and other_batch == "True"


def _policies(pid: int) -> dict[int, int]:
    """Each live thread of `pid` and its scheduling policy."""
    found = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            found[tid] = os.sched_getscheduler(tid)
        except ProcessLookupError:
            continue  # the thread ended meanwhile
    return found


def test_the_gateway_process_runs_its_helper_threads_as_batch() -> None:
    from bench.gateway import build_model_dir, serve_lm, start_gateway, stop

    async def policies() -> tuple[int, dict[int, int]]:
        """The gateway's pid, and each of its threads' policy once the sweep has run."""
        server, port = await serve_lm(0.01)
        with tempfile.TemporaryDirectory() as tmp:
            args = argparse.Namespace(relay=False, stream_interval=1)
            process, _ = await start_gateway(build_model_dir(Path(tmp)), port, args)
            try:
                deadline = time.monotonic() + 30
                while True:  # the first sweep runs a second after start
                    found = _policies(process.pid)
                    others = [p for t, p in found.items() if t != process.pid]
                    if all(p == os.SCHED_BATCH for p in others) or time.monotonic() > deadline:
                        return process.pid, found
                    await asyncio.sleep(0.2)
            finally:
                await stop(process)
                await server.stop(0)

    pid, found = asyncio.run(policies())
    assert found.pop(pid) == os.SCHED_OTHER  # the event loop: woken, it may preempt
    assert found and all(p == os.SCHED_BATCH for p in found.values()), found
