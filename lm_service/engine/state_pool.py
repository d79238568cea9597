"""Recurrent state slots of SSM / hybrid models: which request owns which slot. Pure CPU.

A Mamba layer's state does not grow with the sequence: each running request owns one slot of
the engine's state cache (`state_cache`) from admission to finish, abort or preemption. A
preempted request gives its slot back and recomputes from its first token, so a slot never
has to survive without its owner.
"""

from __future__ import annotations

from collections import deque

from lm_service.engine.request import Request


class StatePool:
    """`num_slots` state slots, handed out in first-freed-first-reused order.

    Args:
        num_slots: slots in the state cache; 0 for models without recurrent state.
    """

    def __init__(self, num_slots: int) -> None:
        if num_slots < 0:
            raise ValueError(f"num_slots must be >= 0, got {num_slots}")
        self.num_slots = num_slots
        self._free: deque[int] = deque(range(num_slots))

    @property
    def enabled(self) -> bool:
        return self.num_slots > 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_slots if self.num_slots else 0.0

    def can_allocate(self, request: Request) -> bool:
        return not self.enabled or request.state_slot is not None or bool(self._free)

    def allocate(self, request: Request) -> None:
        """Give `request` a slot (no-op without recurrent state or when it has one)."""
        if not self.enabled or request.state_slot is not None:
            return
        if not self._free:
            raise RuntimeError("no free state slot; check can_allocate first")
        request.state_slot = self._free.popleft()

    def free(self, request: Request) -> None:
        if request.state_slot is not None:
            self._free.append(request.state_slot)
            request.state_slot = None
