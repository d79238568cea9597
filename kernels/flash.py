"""CUDA fast path: flash-attn's varlen kernel reading the paged KV cache through `block_table`.

`flash_attn` is imported lazily (CI and CPU hosts do not have it). Upstream flash-attn 2 reads a
paged KV cache only when the block size is a multiple of 256 ("Paged KV cache block size must be
divisible by 256"), so the runner should pick `block_size=256` on CUDA to get this path; other
block sizes fall back to the torch reference.

flash-attn's masks are causal (with a window) or full; it cannot open a bidirectional range
inside a causal sequence (Gemma 3's images, PaliGemma's prefix). A step whose metadata has such
ranges runs on the torch reference instead (it reads the same KV layout), and this is logged
once; every other step of the same model stays on flash-attn.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels import torch_attention
from kernels.metadata import AttentionMetadata

PAGED_BLOCK_MULTIPLE = 256  # flash-attn 2's constraint on the paged KV block size
logger = logging.getLogger(__name__)


@functools.cache
def _load_varlen_func() -> Callable[..., torch.Tensor] | None:
    """flash-attn's `flash_attn_varlen_func` when it is installed and takes `block_table`."""
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    if "block_table" not in _parameters(flash_attn_varlen_func):
        return None  # flash-attn < 2.5: no paged KV
    return flash_attn_varlen_func


def _parameters(func: Callable[..., object]) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return frozenset()


def is_supported(
    device: torch.device,
    dtype: torch.dtype,
    head_dim: int,
    block_size: int,
    logits_soft_cap: float | None = None,
    *,
    v_head_dim: int | None = None,
    uses_alibi: bool = False,
) -> bool:
    """Whether the flash kernel can serve a layer with this geometry on this device."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    if head_dim > 256 or head_dim % 8 or block_size % PAGED_BLOCK_MULTIPLE:
        return False
    if v_head_dim is not None and v_head_dim != head_dim:
        return False
    varlen_func = _load_varlen_func()
    if varlen_func is None:
        return False
    parameters = _parameters(varlen_func)
    if uses_alibi and "alibi_slopes" not in parameters:
        return False
    return logits_soft_cap is None or "softcap" in parameters


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `kernels.torch_attention.paged_attention`, on flash-attn.

    Args:
        query: `[T, num_heads, head_dim]` (fp16/bf16, CUDA).
        k_cache, v_cache: `[num_blocks, block_size, num_kv_heads, head_dim]`.

    Returns:
        `[T, num_heads, head_dim]`.
    """
    if meta.has_bidirectional:
        _log_bidirectional_fallback()
        return torch_attention.paged_attention(
            query,
            k_cache,
            v_cache,
            meta,
            scale=scale,
            sliding_window=sliding_window,
            logits_soft_cap=logits_soft_cap,
            alibi_slopes=alibi_slopes,
        )
    varlen_func = _load_varlen_func()
    if varlen_func is None:
        raise RuntimeError("flash-attn is not installed")
    seq_lens = meta.seq_lens.to(torch.int32)
    # flash-attn's window is inclusive: HF's `p - k < w` is `p - k <= w - 1`
    window = (-1, -1) if sliding_window is None else (sliding_window - 1, 0)
    # softcap and alibi_slopes only when set: older flash-attn lacks the arguments
    extra: dict[str, object] = {} if logits_soft_cap is None else {"softcap": logits_soft_cap}
    if alibi_slopes is not None:
        extra["alibi_slopes"] = alibi_slopes.to(device=query.device, dtype=torch.float32)
    return varlen_func(
        query,
        k_cache,
        v_cache,
        cu_seqlens_q=meta.query_start_loc.to(torch.int32),
        cu_seqlens_k=F.pad(torch.cumsum(seq_lens, 0, dtype=torch.int32), (1, 0)),
        max_seqlen_q=meta.max_query_len,
        max_seqlen_k=meta.max_seq_len,
        softmax_scale=scale,
        causal=True,
        window_size=window,
        block_table=meta.block_table.to(torch.int32),
        **extra,
    )


@functools.cache
def _log_bidirectional_fallback() -> None:
    logger.info(
        "flash-attn cannot express bidirectional attention ranges (media or prefix); steps "
        "that have them run on the torch reference attention"
    )
