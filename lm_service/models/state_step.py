"""What every state-space mixer (Mamba, Mamba2) shares: the step's view of the engine's state
cache, and the causal convolution that continues from a saved state."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

STATE_INDEX_ATTR = "meshserve_state_index"


@dataclass(frozen=True, slots=True)
class StateStep:
    """The recurrent state a step reads and writes, and where each request's part of it is.

    Args:
        conv_states: per Mamba layer `[num_slots, *StateCacheSpec.conv_shape]`.
        ssm_states: per Mamba layer `[num_slots, *StateCacheSpec.ssm_shape]`.
        groups: per set of requests with the same number of new tokens L, (their slots [B],
            their rows in the flattened step [B, L]); every decode step is one group.
    """

    conv_states: Sequence[torch.Tensor]
    ssm_states: Sequence[torch.Tensor]
    groups: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @classmethod
    def build(
        cls,
        conv_states: Sequence[torch.Tensor],
        ssm_states: Sequence[torch.Tensor],
        slot_ids: Sequence[int],
        query_lens: Sequence[int],
        device: torch.device,
    ) -> StateStep:
        """`slot_ids` and `query_lens` per scheduled request, in batch order (their tokens
        lie end to end in the step)."""
        starts = [0, *itertools.accumulate(query_lens)][:-1]
        by_length: dict[int, list[int]] = {}
        for index, length in enumerate(query_lens):
            by_length.setdefault(length, []).append(index)
        groups = []
        for length, indices in by_length.items():
            slots = torch.tensor([slot_ids[i] for i in indices], device=device)
            rows = torch.tensor([starts[i] for i in indices], device=device)[:, None]
            groups.append((slots, rows + torch.arange(length, device=device)))
        return cls(conv_states, ssm_states, tuple(groups))


def causal_conv1d(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution continuing from `conv_state`.

    Args:
        x: [B, L, C] new inputs.
        conv_state: [B, C, K - 1] the inputs before them (zeros at a sequence's start).
        weight: [C, K]; bias: [C] or None.

    Returns:
        (y [B, L, C] before the activation, the new state [B, C, K - 1]).
    """
    width = weight.shape[1] - 1
    extended = torch.cat([conv_state.to(x.dtype), x.transpose(1, 2)], dim=2)  # [B, C, K-1+L]
    y = F.conv1d(extended.to(weight.dtype), weight[:, None, :], bias, groups=weight.shape[0])
    return y.transpose(1, 2).to(x.dtype), extended[:, :, extended.shape[2] - width :]
