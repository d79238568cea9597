"""`meshserve up` keeps its services running: a child that dies is started again after an
exponential backoff (`--restart on-failure`, the default), with a log line for the death, the
restart and the moment it is SERVING again. The death of one service never stops the others:
the gateway answers UNAVAILABLE while its LM is away and serves again once it is back.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Report = Callable[[str], None]  # one log line (or a few) for the operator


class Supervised(Protocol):
    """What the supervisor needs of a child process (`gateway.tools.launcher.Child`)."""

    spec: Any
    is_reported: bool

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def is_serving(self) -> bool: ...

    def start(self) -> None: ...

    def kill_leftovers(self) -> None: ...


class Restart(enum.Enum):
    ON_FAILURE = "on-failure"  # a child that crashes, is killed or exits non-zero
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When and how soon a dead child is started again.

    Args:
        mode: restart on failure, or never.
        initial_seconds / max_seconds: the first delay, doubled for each failure in a row, up
            to the cap.
        reset_after_seconds: a child that ran this long since its last start begins again
            at `initial_seconds` when it next fails.
    """

    mode: Restart = Restart.ON_FAILURE
    initial_seconds: float = 1.0
    max_seconds: float = 30.0
    reset_after_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_seconds <= self.max_seconds:
            raise ValueError(
                f"restart delays need 0 < initial ({self.initial_seconds}) <= max "
                f"({self.max_seconds})"
            )

    def should_restart(self, returncode: int | None) -> bool:
        return self.mode is Restart.ON_FAILURE and returncode != 0

    def delay(self, num_failures: int) -> float:
        """Seconds before starting a child that has failed `num_failures` (>= 1) times in a row."""
        return min(self.initial_seconds * 2 ** max(num_failures - 1, 0), self.max_seconds)


@dataclass(eq=False, slots=True)
class _Life:
    """A child's restart bookkeeping."""

    started_at: float
    num_failures: int = 0  # in a row
    num_restarts: int = 0
    restart_at: float | None = None  # when dead and due a restart
    is_awaiting_serving: bool = False


class Supervisor:
    """Watches children; reports each death and restarts the child as `policy` says.

    Args:
        describe_death: a child and a context -> the death report (exit, last log lines).
    """

    def __init__(
        self,
        children: Sequence[Supervised],
        policy: RestartPolicy,
        describe_death: Callable[[Supervised, str], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = list(children)
        self.policy = policy
        self.describe_death = describe_death
        self.clock = clock
        self.num_deaths = 0
        self._lives = {id(child): _Life(started_at=clock()) for child in self.children}

    def life(self, child: Supervised) -> _Life:
        return self._lives[id(child)]

    @property
    def has_work(self) -> bool:
        """Some child is running or due a restart."""
        return any(c.is_alive() or self.life(c).restart_at is not None for c in self.children)

    def tick(self, report: Report, may_restart: bool = True) -> None:
        """One look at every child: new deaths reported, due restarts done, recoveries told."""
        for child in self.children:
            life = self.life(child)
            if child.is_alive():
                self._follow_running(child, life, report)
            elif not child.is_reported:
                self._on_death(child, life, report, may_restart)
            elif may_restart and life.restart_at is not None and self.clock() >= life.restart_at:
                self._restart(child, life, report)

    def _on_death(self, child: Supervised, life: _Life, report: Report, may_restart: bool) -> None:
        child.is_reported = True
        self.num_deaths += 1
        life.is_awaiting_serving = False
        if not (may_restart and self.policy.should_restart(child.returncode)):
            why = "--restart never" if self.policy.mode is Restart.NEVER else "a clean exit"
            if may_restart:
                report(self.describe_death(child, f"; not restarted ({why}), the rest run on"))
            else:
                report(self.describe_death(child, " while the stack was stopping"))
            return
        if self.clock() - life.started_at >= self.policy.reset_after_seconds:
            life.num_failures = 0  # it ran long enough: a fresh failure, not a crash loop
        life.num_failures += 1
        delay = self.policy.delay(life.num_failures)
        life.restart_at = self.clock() + delay
        context = f"; restarting it in {delay:g}s (restart {life.num_restarts + 1})"
        report(self.describe_death(child, context))

    def _restart(self, child: Supervised, life: _Life, report: Report) -> None:
        child.kill_leftovers()
        child.start()
        child.is_reported = False
        life.restart_at = None
        life.started_at = self.clock()
        life.num_restarts += 1
        life.is_awaiting_serving = True
        report(f"{child.spec.name} restarted as pid {child.pid} (restart {life.num_restarts})")

    def _follow_running(self, child: Supervised, life: _Life, report: Report) -> None:
        if life.is_awaiting_serving and child.is_serving():
            life.is_awaiting_serving = False
            elapsed = self.clock() - life.started_at
            report(
                f"{child.spec.name} (pid {child.pid}) is SERVING again, {elapsed:.1f}s after its restart"
            )
