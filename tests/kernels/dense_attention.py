"""Dense float64 attention on HF's own mask functions: the ground truth for the kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.masking_utils import (
    and_masks,
    blockwise_overlay,
    causal_mask_function,
    or_masks,
    sliding_window_causal_mask_function,
    sliding_window_overlay,
)


def naive_attention(
    query: torch.Tensor,  # [L, H, D]
    keys: torch.Tensor,  # [S, Hkv, D] the whole sequence
    values: torch.Tensor,  # [S, Hkv, D]
    scale: float,
    window: int | None = None,
    soft_cap: float | None = None,
    bidirectional: Sequence[tuple[int, int]] = (),
    alibi_slopes: torch.Tensor | None = None,  # [H]
) -> torch.Tensor:
    """Dense float64 attention of the LAST L positions of an S-token sequence.

    Values may have their own head dim (MLA); ALiBi adds `slope[h] * (k - p)` to each score.

    `bidirectional` ranges become HF's `block_sequence_ids` (one block per range), composed as
    Gemma 3 does: `OR(causal, blockwise)`, and `AND(sliding_window, OR(causal, blockwise))`.
    """
    q_len, num_heads, _ = query.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    k = keys.double().repeat_interleave(group, dim=1)  # [S, H, D]
    v = values.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("lhd,shd->hls", query.double(), k) * scale  # [H, L, S]
    if soft_cap is not None:
        scores = soft_cap * torch.tanh(scores / soft_cap)
    q_pos = torch.arange(seq_len - q_len, seq_len)[:, None]
    k_pos = torch.arange(seq_len)[None, :]
    if alibi_slopes is not None:
        scores = scores + alibi_slopes.double()[:, None, None] * (k_pos - q_pos)
    mask = _mask_function(seq_len, window, bidirectional)(0, 0, q_pos, k_pos)  # [L, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hls,shd->lhd", scores.softmax(-1), v)  # [L, H, Dv]


def _mask_function(
    seq_len: int, window: int | None, bidirectional: Sequence[tuple[int, int]]
) -> object:
    if not bidirectional:
        return (
            causal_mask_function if window is None else sliding_window_causal_mask_function(window)
        )
    block_ids = torch.full((1, seq_len), -1)
    for block, (start, end) in enumerate(bidirectional):
        block_ids[0, start:end] = block
    opened = or_masks(causal_mask_function, blockwise_overlay(block_ids))
    return opened if window is None else and_masks(sliding_window_overlay(window), opened)
