"""`meshserve up` as a child process for the demo: start, wait until ready, stop."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

READY_PREFIX = "meshserve up: gateway on "
START_TIMEOUT_S = 180.0


def say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def running_stack(model: Path, port: int) -> Iterator[str]:
    """`meshserve up` as a child process; yields the gateway address once it is ready."""
    argv = ["up", "--model", str(model), "--port", str(port), "--num-blocks", "256"]
    say(f"$ meshserve {' '.join(argv)}")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.tools.cli", *argv, "--grace-seconds", "5"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    try:
        yield _wait_ready(process, lines)
    finally:
        _stop(process)


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        say(line.rstrip("\n"))
        lines.put(line)
    lines.put(None)


def _wait_ready(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"meshserve up exited with status {process.wait()}")
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].split()[0]
    raise RuntimeError(f"meshserve up was not ready within {START_TIMEOUT_S:.0f}s")


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (up drains the gateway and stops its children), SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
