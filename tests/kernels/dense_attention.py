"""Dense float64 attention on HF's own mask functions: the ground truth for the kernels."""

from __future__ import annotations

import torch
from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function


def naive_attention(
    query: torch.Tensor,  # [L, H, D]
    keys: torch.Tensor,  # [S, Hkv, D] the whole sequence
    values: torch.Tensor,  # [S, Hkv, D]
    scale: float,
    window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Dense float64 attention of the LAST L positions of an S-token sequence."""
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
    mask_fn = (
        causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    )
    mask = mask_fn(0, 0, q_pos, k_pos)  # [L, S] HF semantics
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hls,shd->lhd", scores.softmax(-1), v)  # [L, H, D]
