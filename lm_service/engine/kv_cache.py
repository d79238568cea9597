"""Sizing and allocating the paged KV cache from a model's KVCacheSpec."""

from __future__ import annotations

import torch

from protos.errors import InvalidRequest


def bytes_per_block(spec: object, block_size: int) -> int:
    """K and V of one block across all layers."""
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    per_layer = 2 * block_size * spec.num_kv_heads * spec.head_dim * itemsize
    return per_layer * spec.num_layers


def num_blocks_for(spec: object, block_size: int, memory: int, max_useful_tokens: int) -> int:
    """Blocks that fit `memory` bytes, capped at what `max_useful_tokens` could ever use."""
    fit = memory // bytes_per_block(spec, block_size)
    useful = -(-max_useful_tokens // block_size)
    num_blocks = min(fit, useful)
    if num_blocks < 1:
        raise InvalidRequest(
            f"kv_cache_memory of {memory} bytes holds no KV block "
            f"({bytes_per_block(spec, block_size)} bytes each); raise --kv-cache-memory"
        )
    return num_blocks


def allocate_kv_caches(
    spec: object, num_blocks: int, block_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (k_cache, v_cache), each [num_blocks, block_size, num_kv_heads, head_dim].

    NOTE: zeroed, not empty: padded block-table entries gather these rows, and garbage NaNs
    there would leak through a masked softmax (0 * NaN = NaN).
    """
    shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
    return [
        (
            torch.zeros(shape, dtype=spec.dtype, device=device),
            torch.zeros(shape, dtype=spec.dtype, device=device),
        )
        for _ in range(spec.num_layers)
    ]
