"""Sizing and allocating the paged KV cache: the engine's policy over the backend's layout.

The attention backend (`kernels.attention.AttentionBackend`) says what one layer's cache looks
like and what a block costs; this module only decides how many blocks to hold.
"""

from __future__ import annotations

import torch

from kernels.attention import AttentionBackend
from lm_service.models.base import KVCacheSpec
from protos.errors import InvalidRequest


def bytes_per_block(spec: KVCacheSpec, backend: AttentionBackend, block_size: int) -> int:
    """K and V of one block across all layers."""
    per_layer = backend.kv_cache_bytes_per_block(
        block_size, spec.num_kv_heads, spec.head_dim, spec.dtype, spec.stored_value_head_dim
    )
    return per_layer * spec.num_layers


def num_blocks_for(
    spec: KVCacheSpec,
    backend: AttentionBackend,
    block_size: int,
    memory: int,
    max_useful_tokens: int,
) -> int:
    """Blocks that fit `memory` bytes, capped at what `max_useful_tokens` could ever use."""
    block_bytes = bytes_per_block(spec, backend, block_size)
    useful = -(-max_useful_tokens // block_size)
    if block_bytes == 0:  # no attention layer (Mamba): blocks only count tokens
        return useful
    num_blocks = min(memory // block_bytes, useful)
    if num_blocks < 1:
        raise InvalidRequest(
            f"kv_cache_memory of {memory} bytes holds no KV block "
            f"({block_bytes} bytes each); raise --kv-cache-memory"
        )
    return num_blocks


def allocate_kv_caches(
    spec: KVCacheSpec,
    backend: AttentionBackend,
    num_blocks: int,
    block_size: int,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (k_cache, v_cache) in `backend.kv_cache_shape(...)`, V with its own head dim;
    for a latent cache (`spec.values_in_keys`) v_cache is a view of k_cache's first lanes.

    NOTE: zeroed, not empty: padded block-table entries gather these rows, and garbage NaNs
    there would leak through a masked softmax (0 * NaN = NaN). Zeroing also touches every
    page now (vLLM zero-fills too): `torch.empty` on CPU maps pages only when first written,
    so RSS would not show the cache a user sized the box for, and each page faulted in
    mid-serving would be a latency spike (`lm_service.engine.cache_memory` measures it).
    """

    def zeros(head_dim: int) -> torch.Tensor:
        shape = backend.kv_cache_shape(num_blocks, block_size, spec.num_kv_heads, head_dim)
        return torch.zeros(shape, dtype=spec.dtype, device=device)

    caches = []
    for _ in range(spec.num_layers):
        k_cache = zeros(spec.head_dim)
        if spec.values_in_keys:
            caches.append((k_cache, k_cache[..., : spec.value_head_dim]))
        else:
            caches.append((k_cache, zeros(spec.value_head_dim)))
    return caches
