"""Scheduling policy for a service's own helper threads (Linux; a no-op elsewhere).

On cores the engine keeps busy, every thread of a gateway that is woken preempts the thread
that woke it: grpc.aio's completion-queue poller and gRPC core's event-engine threads are
woken once per written message, each time stopping the event loop mid-burst. SCHED_BATCH
threads do not preempt on wakeup: they run when the event loop sleeps, and then handle the
completions that piled up in one go. Measured in `bench.mesh` on 2 cores (32 streams): the
gateway's context switches per streamed token 4.3 -> 2.8, its CPU per token 140 -> 118 us.
With an idle core a woken thread runs there at once, as before.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def batch_other_threads() -> int:
    """Makes every other thread of this process SCHED_BATCH (threads they start inherit it);
    the calling thread keeps its policy. Returns how many threads changed."""
    if not hasattr(os, "SCHED_BATCH"):
        return 0
    me, changed = threading.get_native_id(), 0
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        try:
            if tid == me or os.sched_getscheduler(tid) == os.SCHED_BATCH:
                continue
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        except OSError:  # it ended meanwhile, or a real-time thread we may not demote
            continue
        changed += 1
    return changed
