"""`meshserve up` supervision with `sleep` processes standing in for services: a killed child is
restarted with exponential backoff and a log line each time, the others never stop;
`--restart never` leaves it down; the backoff itself."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.tools.launcher import Child, Stack, StackOptions, StopSignal, plan_stack
from gateway.tools.supervisor import Restart, RestartPolicy


def test_backoff_doubles_up_to_its_cap_and_only_failures_restart() -> None:
    policy = RestartPolicy(initial_seconds=1, max_seconds=30)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.should_restart(-signal.SIGKILL) and policy.should_restart(1)
    assert not policy.should_restart(0)  # on-failure: a clean exit stays down
    assert not RestartPolicy(Restart.NEVER).should_restart(-signal.SIGKILL)
    with pytest.raises(ValueError, match="restart delays"):
        RestartPolicy(initial_seconds=0)


def _start_sleeper(child: Child) -> None:
    child.process = subprocess.Popen(["sleep", "60"], start_new_session=True)


def _stack(tmp_path: Path, policy: RestartPolicy) -> Stack:
    """lm, encoder-image and gateway as `sleep` processes, restarted as sleepers too."""
    ports = iter(range(43000, 43100))
    plan = plan_stack(StackOptions(model="m"), ["image"], lambda: next(ports))
    stack = Stack(plan, tmp_path, StopSignal(), policy)
    for child in stack.children:
        child.log_path.write_text(f"{child.spec.name} last line\n")
        child.start = lambda child=child: _start_sleeper(child)  # type: ignore[method-assign]
        child.is_serving = lambda: True  # type: ignore[method-assign]
        child.start()
    return stack


def _watch(stack: Stack, seconds: float, kills: list[tuple[float, Child]]) -> tuple[bool, list]:
    """Runs `watch` for `seconds`, SIGKILLing each child at its time; (result, reports)."""
    for at, child in kills:
        threading.Timer(at, lambda child=child: child.signal(signal.SIGKILL)).start()
    threading.Timer(seconds, stack.stop_signal.event.set).start()
    reports: list[str] = []
    return stack.watch(reports.append), reports


def test_a_killed_child_is_restarted_with_backoff_and_the_rest_keep_running(
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path, RestartPolicy(initial_seconds=0.3, max_seconds=5))
    lm, encoder, gateway = stack.children
    others = [(encoder.pid, encoder), (gateway.pid, gateway)]
    first_pid = lm.pid
    try:
        is_clean, reports = _watch(stack, 3.0, [(0.1, lm), (1.5, lm)])
        assert is_clean and stack.num_deaths == 2
        assert lm.is_alive() and lm.pid != first_pid
        assert all(child.pid == pid and child.is_alive() for pid, child in others)
    finally:
        stack.stop(grace_seconds=0)
    died, restarted, serving, died_again, *rest = reports
    assert f"lm (pid {first_pid}) was killed by SIGKILL; restarting it in 0.3s (restart 1)" in died
    assert "lm last line" in died  # the child's own log, as before
    assert restarted.startswith("lm restarted as pid ") and "(restart 1)" in restarted
    assert "is SERVING again" in serving
    assert "restarting it in 0.6s (restart 2)" in died_again  # doubled: a failure in a row
    assert any("(restart 2)" in line for line in rest)


def test_restart_never_leaves_the_child_down_and_the_rest_running(tmp_path: Path) -> None:
    stack = _stack(tmp_path, RestartPolicy(Restart.NEVER))
    lm, encoder, gateway = stack.children
    try:
        started = time.monotonic()
        is_clean, reports = _watch(stack, 1.0, [(0.1, lm)])
        assert is_clean and time.monotonic() - started >= 1.0  # still watching the rest
        assert not lm.is_alive() and encoder.is_alive() and gateway.is_alive()
    finally:
        stack.stop(grace_seconds=0)
    (report,) = reports
    assert "lm (pid" in report and "not restarted (--restart never), the rest run on" in report


def test_watch_ends_once_nothing_runs_or_is_due_a_restart(tmp_path: Path) -> None:
    stack = _stack(tmp_path, RestartPolicy(Restart.NEVER))
    for child in stack.children:
        child.signal(signal.SIGKILL)
        child.wait(5)
    try:
        stack.stop_signal.event.clear()
        threading.Timer(10, stack.stop_signal.event.set).start()  # a safety net
        started = time.monotonic()
        assert stack.watch(lambda _: None) is False
        assert time.monotonic() - started < 5 and stack.num_deaths == 3
    finally:
        stack.stop_signal.event.set()
        stack.stop(grace_seconds=0)
