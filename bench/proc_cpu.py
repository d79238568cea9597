"""CPU time of processes and threads from /proc (Linux), for CPU-per-token figures."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads), or of one of its threads."""
    path = Path(f"/proc/{pid}/stat") if tid is None else Path(f"/proc/{pid}/task/{tid}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` now."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = cpu_seconds(pid, int(task.name))
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return out


def thread_groups(pid: int) -> dict[str, float]:
    """CPU seconds of `pid`'s threads in four groups: its main thread (a grpc.aio server's
    event loop), gRPC core's own threads (named grpc_*, event_engine, ...), the LM's
    "engine-loop" thread with the torch workers it started (they inherit its name), and the
    other Python threads (named "python": grpc.aio's completion-queue poller, the metrics
    server, the torch workers of the main thread)."""
    groups = {"event loop": 0.0, "grpc threads": 0.0, "engine loop": 0.0, "python threads": 0.0}
    for tid, seconds in thread_cpu_seconds(pid).items():
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        if tid == pid:
            groups["event loop"] += seconds
        elif name.startswith("engine-loop"):
            groups["engine loop"] += seconds
        elif name.startswith("python"):
            groups["python threads"] += seconds
        else:
            groups["grpc threads"] += seconds
    return groups


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of `pid`'s live threads so far: a thread that
    slept until woken, and one preempted while it could run. Counts, not clocks, so the
    machine's speed does not move them; a thread that has ended is no longer counted."""
    woken = preempted = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                woken += int(line.split(":")[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                preempted += int(line.split(":")[1])
    return woken, preempted


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"
