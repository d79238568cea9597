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

from protos.sched import AUTO, OFF, current_cpu, parse_pin_cpu

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


PIN_CHILD = """
import os, sys, threading
from protos.sched import pin_threads
cpu = int(sys.argv[1])
stop = threading.Event()
helper = threading.Thread(target=stop.wait)
helper.start()
changed = pin_threads(cpu)
later = threading.Thread(target=lambda: print(os.sched_getaffinity(0) == {cpu}, end=" "))
later.start(), later.join()
print(changed, os.sched_getaffinity(helper.native_id) == {cpu}, os.sched_getaffinity(0) == {cpu},
      pin_threads(cpu))
stop.set()
"""

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning to one CPU needs another to leave",
)


@needs_two_cpus
def test_pinning_puts_every_thread_and_the_threads_they_start_on_the_cpu() -> None:
    cpu = max(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, "-c", PIN_CHILD, str(cpu)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    started_later, changed, helper_pinned, caller_pinned, again = done.stdout.split()
    assert int(changed) >= 2 and helper_pinned == caller_pinned == started_later == "True"
    assert again == "0"  # already pinned: nothing left to change


def test_pin_cpu_takes_auto_off_or_a_cpu_of_this_process() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert parse_pin_cpu("auto") == AUTO and parse_pin_cpu("off") == OFF
    assert parse_pin_cpu(str(allowed[-1])) == allowed[-1]
    for text in ("many", "-1", str(allowed[-1] + 1)):
        with pytest.raises(argparse.ArgumentTypeError, match="a CPU this process may run on"):
            parse_pin_cpu(text)


def test_current_cpu_is_one_this_thread_may_run_on() -> None:
    assert current_cpu() in os.sched_getaffinity(0)


def _placement(pid: int) -> dict[int, tuple[int, frozenset[int]]]:
    """Each live thread of `pid`: its scheduling policy and the CPUs it may run on."""
    found = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            found[tid] = (os.sched_getscheduler(tid), frozenset(os.sched_getaffinity(tid)))
        except ProcessLookupError:
            continue  # the thread ended meanwhile
    return found


def _is_swept(pid: int, found: dict[int, tuple[int, frozenset[int]]]) -> bool:
    others = [policy for tid, (policy, _) in found.items() if tid != pid]
    cpus = {cpus for _, cpus in found.values()}
    return all(p == os.SCHED_BATCH for p in others) and len(cpus) == 1 and len(min(cpus)) == 1


def test_the_gateway_runs_its_helper_threads_as_batch_all_on_its_loops_cpu() -> None:
    from bench.gateway import build_model_dir, serve_lm, start_gateway, stop

    async def placement() -> tuple[int, dict[int, tuple[int, frozenset[int]]]]:
        """The gateway's pid, and each of its threads' placement once the sweep has run."""
        server, port = await serve_lm(0.01)
        with tempfile.TemporaryDirectory() as tmp:
            args = argparse.Namespace(relay=False, stream_interval=1)
            process, _ = await start_gateway(build_model_dir(Path(tmp)), port, args)
            try:
                deadline = time.monotonic() + 30
                while True:  # the first sweep runs a second after start
                    found = _placement(process.pid)
                    if _is_swept(process.pid, found) or time.monotonic() > deadline:
                        return process.pid, found
                    await asyncio.sleep(0.2)
            finally:
                await stop(process)
                await server.stop(0)

    pid, found = asyncio.run(placement())
    policy, cpus = found.pop(pid)
    assert policy == os.SCHED_OTHER  # the event loop: woken, it may preempt
    # --pin-cpu auto: one CPU of those it may run on (with two or more, the pin shows)
    assert len(cpus) == 1 and cpus <= os.sched_getaffinity(0), cpus
    assert found and all(placed == (os.SCHED_BATCH, cpus) for placed in found.values()), found
