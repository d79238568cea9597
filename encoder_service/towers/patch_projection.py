"""Qwen2-VL's patch embedding as the matmul it is, instead of a Conv3d call per patch batch.

The patch embed views every flattened patch as one Conv3d input exactly the kernel's size
(kernel == stride, no padding), so the convolution is one dot product per output channel:
`F.linear(patch, kernel.flatten())`. torch's CPU Conv3d runs it as a real 3-D convolution:
for 32 images of 256 patches (Qwen2-VL-2B's widths, 2 threads) 791 ms against the matmul's
172 ms, about 13% of the whole 2-block tower. Same weights, same result to fp32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchProjection(nn.Module):
    """A Conv3d with kernel == stride over inputs exactly one kernel in size, as a linear.

    Keeps the conv's `weight` [out, C, T, P, P] and `bias` Parameters (HF's forward reads
    `proj.weight.dtype`).
    """

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if not is_patch_conv(conv):
            raise ValueError(f"{conv} is not a kernel == stride patch convolution")
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [N, C, T, P, P] -> [N, out] (the conv's [N, out, 1, 1, 1], flattened)."""
        if patches.shape[1:] != self.weight.shape[1:]:
            raise ValueError(f"patches {tuple(patches.shape)} do not match the kernel")
        flat = patches.reshape(patches.shape[0], -1)  # [N, C*T*P*P]
        return F.linear(flat, self.weight.reshape(self.weight.shape[0], -1), self.bias)


def is_patch_conv(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv3d)
        and tuple(conv.kernel_size) == tuple(conv.stride)
        and tuple(conv.padding) == (0, 0, 0)
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.groups == 1
    )


def project_patches_as_linear(patch_embed: nn.Module) -> None:
    """Swaps `patch_embed.proj` (a loaded patch Conv3d) for its PatchProjection."""
    patch_embed.proj = PatchProjection(patch_embed.proj)
