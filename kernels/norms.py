"""RMSNorm as HF computes it: statistics in float32, then back to the input dtype.

Two HF conventions exist and both are reproduced bit for bit:
- Llama (`offset == 0`): `weight * normed.to(input_dtype)` — cast first, then scale.
- Gemma (`offset != 0`, Gemma uses `1 + weight`): `(normed * (offset + weight.float()))`, then
  cast — scale in float32, cast last.
"""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, offset: float = 0.0
) -> torch.Tensor:
    """Root-mean-square norm over the last dim.

    Args:
        x: `[..., hidden]`.
        weight: `[hidden]`.
        eps: added to the mean square before the reciprocal square root.
        offset: 0 for Llama-style `weight`; 1 for Gemma-style `1 + weight`.

    Returns:
        `[..., hidden]` in `x.dtype`.
    """
    input_dtype = x.dtype
    hidden = x.to(torch.float32)
    # NOTE: `hidden` may be `x` itself (float32 input), so the first product is out of place;
    # the later ones write into fresh temporaries in place (same values: `*` commutes exactly)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    if offset == 0.0:
        normed = hidden.to(input_dtype)
        if weight.dtype != input_dtype:
            return (weight * normed).to(input_dtype)
        return normed.mul_(weight)
    return hidden.mul_(offset + weight.float()).to(input_dtype)


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the residual stream, then normalise: the pre-norm decoder layer's usual pair.

    Args:
        x: `[..., hidden]` the sub-layer output.
        residual: `[..., hidden]` the residual stream so far.

    Returns:
        `(rms_norm(x + residual), x + residual)`, the sum in the input dtype as HF adds it.
    """
    summed = x + residual
    return rms_norm(summed, weight, eps, offset=offset), summed
