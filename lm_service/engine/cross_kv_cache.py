"""Sizing and allocating the cross-attention cache of encoder-decoder models.

Per cross-attention layer `(k_cache, v_cache)` of `[num_blocks, block_size, num_kv_heads,
head_dim]` (the self-attention layout, so one kernel gathers both). The engine reserves
blocks for as many requests of the longest encoder output as the budget holds beside their
longest self-attention KV (at most `max_num_seqs`), and sizes the self-attention cache from
what is left: a request needs both, so neither cache starves the other.
"""

from __future__ import annotations

import torch

from lm_service.models.base import CrossAttentionSpec
from protos.errors import InvalidRequest


def num_encoder_blocks_for(
    spec: CrossAttentionSpec | None,
    block_size: int,
    memory: int,
    max_num_seqs: int,
    decoder_bytes_per_request: int = 0,
) -> int:
    """Cross-attention blocks to reserve in `memory` bytes.

    Args:
        decoder_bytes_per_request: the self-attention KV of one request at max_model_len.
    """
    if spec is None:
        return 0
    per_request = -(-spec.max_encoder_len // block_size)
    cross_bytes = per_request * spec.bytes_per_block(block_size)
    num_requests = min(max_num_seqs, memory // (cross_bytes + decoder_bytes_per_request))
    if num_requests < 1:
        raise InvalidRequest(
            f"kv_cache_memory of {memory} bytes cannot hold one request: {cross_bytes} bytes of "
            f"cross-attention K/V for {spec.max_encoder_len} encoder positions and "
            f"{decoder_bytes_per_request} of decoder KV; raise --kv-cache-memory"
        )
    return num_requests * per_request


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
