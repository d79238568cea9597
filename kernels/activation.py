"""Gated activations of the MLP blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU on a fused gate/up projection: `silu(gate) * up`.

    Args:
        x: `[..., 2 * intermediate]`, the gate half first, then the up half.

    Returns:
        `[..., intermediate]`.
    """
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)  # in place on silu's fresh output: one temporary less


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """GeGLU with the tanh approximation (Gemma's `gelu_pytorch_tanh`): `gelu(gate) * up`.

    Args:
        x: `[..., 2 * intermediate]`, the gate half first, then the up half.
    """
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up
