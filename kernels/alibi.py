"""ALiBi slopes: the per-head linear bias of "Train Short, Test Long" (Press et al., 2021).

The attention kernels add `slope[h] * (k - p)` to the score of the query at position p for the
key at position k (`kernels.torch_attention`, and flash-attn's `alibi_slopes`, which adds
`-slope * |p - k|`: the same on the causal side). A bias that depends on `k` alone (HF's Bloom
and MPT tensors) differs from that by a constant per query, which the softmax ignores.
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """`[num_heads]` float32: the paper's geometric slopes (Bloom, Falcon-RW).

    For `n` a power of two the slopes are `2 ** (-8 i / n)`, i = 1..n; otherwise the `n'` of the
    closest lower power of two, then every other slope of `2 n'` heads.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = _geometric(closest, torch.arange(1, closest + 1))
    if closest != num_heads:
        extra = min(closest, num_heads - closest)
        slopes = torch.cat([slopes, _geometric(2 * closest, torch.arange(1, 2 * extra, 2))])
    return slopes


def mpt_alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> torch.Tensor:
    """`[num_heads]` float32: MPT's slopes, `1 / 2 ** (alibi_bias_max * i / n')` over the next
    power of two `n'`, odd entries first when `num_heads` is not a power of two."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    padded = 2 ** math.ceil(math.log2(num_heads))
    base = torch.arange(1, padded + 1, dtype=torch.float32) * (alibi_bias_max / padded)
    slopes = 1.0 / torch.pow(2, base)
    if padded != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes


def _geometric(n: int, powers: torch.Tensor) -> torch.Tensor:
    base = torch.tensor(2 ** (-(2 ** -(math.log2(n) - 3))), dtype=torch.float32)
    return torch.pow(base, powers.to(torch.int32))
