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
- fp32: from 4 rows on, MKL re-packs the plain weight on every call. Against oneDNN's
  packed sgemm (ms, F.linear -> packed, 2 threads, best of 4): LM head [151936 x 896] at 8 /
  32 / 64 rows 53 / 79 / 127 -> 32 / 56 / 88; gate/up [9728 x 896] at 32 / 512 rows 3.86 /
  39.1 -> 2.86 / 36.8; down [896 x 4864] at 32 / 128 rows 1.93 / 6.30 -> 1.55 / 5.09; at 1024
  rows (half a default prefill chunk) packed runs from 2% slower (qkv) to 10% faster (gate/up).
  On the bench workload the engine alone took 114.6 s over four workloads with only the head packed
  and 108.7 s with every linear packed (same process, alternating order). Below 4 rows MKL
  streams the plain weight once, and that wins: 1 / 2 / 3 rows of the head took 21.5 / 23.0 /
  20.1 ms with F.linear against 22.8 / 25.6 / 23.9 packed, and qkv and o half the packed time,
  so those calls (a batch-1 decode step) stay on F.linear. Packed sums run in another order:
  outputs differ from F.linear's by ~1e-6 (parity with HF is checked on logprobs, not bits);
- the checkpoint's `weight` Parameter stays (state dicts, tied embeddings and shard slices read
  it), so packing costs one more copy of each packed weight: +374 MiB for the 4-layer bf16
  bench model, +747 MiB for its fp32 weights (519 MiB of them the 151936 x 896 head);
- CPU only, and only where oneDNN is built in; elsewhere (CUDA, float16, no oneDNN) `pack`
  leaves the layer on `F.linear`.

NOTE: MKL's own packed sgemm (`torch.ops.mkl._mkl_linear`) is not used: it reads its packed
weight only when a call has exactly the row count it was packed for and silently falls back to
the plain weight otherwise, and a serving step's row count changes every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACKABLE_DTYPES = (torch.bfloat16, torch.float32)
# fp32 calls with fewer rows stay on F.linear: MKL reads the plain weight once for them (see the
# module's docstring); from 4 rows on it packs it, and the packed copy wins
MIN_PACKED_FP32_ROWS = 4
# oneDNN picks its blocked layout for this many rows; the layout serves every row count
PACK_ROWS_HINT = 64


def can_pack(weight: torch.Tensor) -> bool:
    """Whether `weight` [out, in] can take the packed path here (CPU, bf16/fp32, oneDNN)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype in PACKABLE_DTYPES
        and weight.dim() == 2
        and torch.backends.mkldnn.is_available()
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The oneDNN-blocked copy of `weight` [out, in] (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)


def cpu_linear(
    x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, from `packed = pack_weight(weight)` when there is one
    (fp32 calls with under MIN_PACKED_FP32_ROWS rows still take F.linear, which wins there).

    Args:
        x: `[..., in]`.
        weight: `[out, in]`, the plain weight.
        packed: its packed copy, or None (then always `F.linear`).
        bias: `[out]` or None.

    Returns:
        `[..., out]` in the weight's dtype.
    """
    if packed is None or not x.numel() or _mkl_reads_it_once(x):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _mkl_reads_it_once(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.numel() < MIN_PACKED_FP32_ROWS * x.shape[-1]


class PackedLinear(nn.Linear):
    """`nn.Linear` that runs from a packed copy of its weight once `pack()` was called.

    Build it like `nn.Linear`; after the weights are loaded, `pack()` (or `pack_linears` on
    the whole model) reorders the weight. Until then, and where packing is not possible, it is
    `F.linear`.
    """

    packed_weight: torch.Tensor | None = None

    def pack(self) -> bool:
        """Reorders the loaded weight; True when the layer now runs packed (fp32 calls under
        MIN_PACKED_FP32_ROWS rows stay on F.linear)."""
        self.packed_weight = pack_weight(self.weight) if can_pack(self.weight) else None
        return self.packed_weight is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_linear(x, self.weight, self.packed_weight, self.bias)


class PackedHead:
    """An LM head `hidden @ weight.T` over a weight the model owns elsewhere (a tied
    embedding), packed once. `weight` [vocab, hidden]."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.packed_weight = pack_weight(weight) if can_pack(weight) else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] in the weight's dtype."""
        return cpu_linear(hidden, self.weight, self.packed_weight, None)


def pack_linears(model: nn.Module) -> int:
    """Packs every `PackedLinear` of `model`; returns how many now run packed."""
    return sum(module.pack() for module in model.modules() if isinstance(module, PackedLinear))
