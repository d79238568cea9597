"""Sizing and allocating the state cache of SSM / hybrid models, beside the KV cache.

One slot per running request holds, for every Mamba layer, its causal-conv state and its SSM
state (`StateCacheSpec`). Slots come out of the same memory budget as KV blocks: the engine
reserves them first (one per `max_num_seqs`, fewer if the budget is short) and sizes the KV
cache from what is left.
"""

from __future__ import annotations

import torch

from lm_service.models.base import StateCacheSpec
from protos.errors import InvalidRequest


def num_state_slots_for(spec: StateCacheSpec | None, memory: int, max_num_seqs: int) -> int:
    """Slots to reserve: one per concurrent request, as many as `memory` bytes hold."""
    if spec is None:
        return 0
    num_slots = min(max_num_seqs, memory // spec.bytes_per_slot)
    if num_slots < 1:
        raise InvalidRequest(
            f"kv_cache_memory of {memory} bytes holds no recurrent state slot "
            f"({spec.bytes_per_slot} bytes each for {spec.num_layers} Mamba layers); "
            "raise --kv-cache-memory"
        )
    return num_slots


def allocate_state_caches(
    spec: StateCacheSpec, num_slots: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(conv_states, ssm_states): per Mamba layer `[num_slots, *shape]`, zeroed."""
    conv = [
        torch.zeros((num_slots, *spec.conv_shape), dtype=spec.conv_dtype, device=device)
        for _ in range(spec.num_layers)
    ]
    ssm = [
        torch.zeros((num_slots, *spec.ssm_shape), dtype=spec.ssm_dtype, device=device)
        for _ in range(spec.num_layers)
    ]
    return conv, ssm
