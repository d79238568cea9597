"""Linear layers whose weights are reordered once, at load time, for oneDNN's CPU GEMM.

`F.linear` on CPU hands a plain `[out, in]` weight to the GEMM on every call, which re-blocks
it each time (bf16: oneDNN reorders the whole matrix into its AMX layout; fp32: MKL packs
panels as it goes). Reordering once into the blocked layout oneDNN's matmul reads
(`torch.ops.mkldnn._reorder_linear_weight`, what inductor's CPU weight freezing uses) and
calling `torch.ops.mkldnn._linear_pointwise` skips that work on every step. Measured on the
bench's Qwen2-0.5B shapes, 2 threads, best of interleaved repeats on a shared machine (ms,
F.linear -> packed): bf16 LM head [64 rows] 120 -> 53, gate/up [1024 rows] 78 -> 35.

- bf16: outputs are bit-identical to `F.linear` (the same oneDNN kernel, minus the
  reorder), for every row count;
- fp32: only the LM head (`PackedHead`, `HeadLinear`) packs. Its [151936 x 896] weight is
  re-packed by MKL on every call, which at a step's 8..64 rows costs more than the product:
  oneDNN's packed sgemm took 32 / 56 / 88 ms against F.linear's 53 / 79 / 127 ms at 8 / 32 /
  64 rows (2 threads), and the bench's fp32 engine run went 26.8, 25.2 s -> 23.9, 24.7 s.
  Its sums run in another order: logits differ from F.linear's by ~1e-6 (parity with HF is
  checked on logprobs, not bits). The decoder's fp32 linears stay on MKL: packing them too
  won in kernel timings but not in the 2-thread bench (25.5, 24.5 s with, on a shared machine);
- the checkpoint's `weight` Parameter stays (state dicts, tied embeddings and shard slices read
  it), so packing costs one more copy of each packed weight: +374 MiB for the 4-layer bf16
  bench model, +519 MiB for its fp32 head (151936 x 896);
- CPU only, and only where oneDNN is built in; elsewhere (CUDA, float16/32, no oneDNN) `pack`
  leaves the layer on `F.linear`.

NOTE: MKL's own packed sgemm (`torch.ops.mkl._mkl_linear`) is not used: it reads its packed
weight only when a call has exactly the row count it was packed for and silently falls back to
the plain weight otherwise, and a serving step's row count changes every step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

PACKABLE_DTYPES = (torch.bfloat16,)
HEAD_PACKABLE_DTYPES = (torch.bfloat16, torch.float32)  # see the module's docstring
# oneDNN picks its blocked layout for this many rows; the layout serves every row count
PACK_ROWS_HINT = 64


def can_pack(weight: torch.Tensor, dtypes: tuple[torch.dtype, ...] = PACKABLE_DTYPES) -> bool:
    """Whether `weight` [out, in] can take the packed path here (CPU, `dtypes`, oneDNN)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype in dtypes
        and weight.dim() == 2
        and torch.backends.mkldnn.is_available()
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The oneDNN-blocked copy of `weight` [out, in] (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)


def cpu_linear(
    x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, from `packed = pack_weight(weight)` when there is one.

    Args:
        x: `[..., in]`.
        weight: `[out, in]`, the plain weight.
        packed: its packed copy, or None (then always `F.linear`).
        bias: `[out]` or None.

    Returns:
        `[..., out]` in the weight's dtype.
    """
    if packed is None or not x.numel():
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """`nn.Linear` that runs from a packed copy of its weight once `pack()` was called.

    Build it like `nn.Linear`; after the weights are loaded, `pack()` (or `pack_linears` on
    the whole model) reorders the weight. Until then, and where packing is not possible, it is
    `F.linear`.
    """

    packed_weight: torch.Tensor | None = None
    pack_dtypes: ClassVar[tuple[torch.dtype, ...]] = PACKABLE_DTYPES

    def pack(self) -> bool:
        """Reorders the loaded weight; True when the layer now runs packed."""
        packable = can_pack(self.weight, self.pack_dtypes)
        self.packed_weight = pack_weight(self.weight) if packable else None
        return self.packed_weight is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_linear(x, self.weight, self.packed_weight, self.bias)


class HeadLinear(PackedLinear):
    """An untied LM head: packs in fp32 too (see the module's docstring)."""

    pack_dtypes = HEAD_PACKABLE_DTYPES


class PackedHead:
    """An LM head `hidden @ weight.T` over a weight the model owns elsewhere (a tied
    embedding), packed once. `weight` [vocab, hidden]."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        packable = can_pack(weight, HEAD_PACKABLE_DTYPES)
        self.packed_weight = pack_weight(weight) if packable else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] in the weight's dtype."""
        return cpu_linear(hidden, self.weight, self.packed_weight, None)


def pack_linears(model: nn.Module) -> int:
    """Packs every `PackedLinear` of `model`; returns how many now run packed."""
    return sum(module.pack() for module in model.modules() if isinstance(module, PackedLinear))
