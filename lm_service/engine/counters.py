"""Counts of the engine's work that a regression guard can check without a clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(slots=True)
class EngineCounters:
    """Engine steps run, tokens sampled, and device -> host copies (each one a host sync on
    an accelerator: the host waits for every kernel queued before it).

    NOTE: every copy to the host on the step path goes through `to_host`, so the count is
    the truth; tests pin the syncs per step of a fixed workload.
    """

    num_steps: int = 0
    num_sampled_tokens: int = 0
    num_host_syncs: int = 0

    def to_host(self, tensor: torch.Tensor) -> Any:
        """`tensor.tolist()`, counted."""
        self.num_host_syncs += 1
        return tensor.tolist()
