"""Sizing and allocating the cross-attention cache of encoder-decoder models.

Per cross-attention layer `(k_cache, v_cache)` of `[num_blocks, block_size, num_kv_heads,
head_dim]` (the self-attention layout, so one kernel gathers both). The engine reserves
enough blocks for `max_num_seqs` requests of the longest encoder output first (fewer if the
memory budget is short) and sizes the self-attention cache from what is left.
"""

from __future__ import annotations

import torch

from lm_service.models.base import CrossAttentionSpec
from protos.errors import InvalidRequest


def num_encoder_blocks_for(
    spec: CrossAttentionSpec | None, block_size: int, memory: int, max_num_seqs: int
) -> int:
    """Blocks to reserve: one request's worth per `max_num_seqs`, as many as `memory` holds."""
    if spec is None:
        return 0
    per_request = -(-spec.max_encoder_len // block_size)
    num_blocks = min(max_num_seqs * per_request, memory // spec.bytes_per_block(block_size))
    if num_blocks < per_request:
        raise InvalidRequest(
            f"kv_cache_memory of {memory} bytes cannot hold the cross-attention K/V of one "
            f"request ({per_request} blocks of {spec.bytes_per_block(block_size)} bytes for "
            f"{spec.max_encoder_len} encoder positions); raise --kv-cache-memory"
        )
    return num_blocks


def allocate_cross_kv_caches(
    spec: CrossAttentionSpec, num_blocks: int, block_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per cross-attention layer (k_cache, v_cache), zeroed (padded reads are masked, and a
    NaN there would still poison the masked products)."""
    shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
    return [
        (
            torch.zeros(shape, dtype=spec.dtype, device=device),
            torch.zeros(shape, dtype=spec.dtype, device=device),
        )
        for _ in range(spec.num_layers)
    ]
