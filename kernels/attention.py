"""The attention layer over the paged KV cache, and the backends that serve it.

KV layout (owned by `AttentionBackend`, asked by the engine before it allocates): per layer
`k_cache: [num_blocks, block_size, num_kv_heads, head_dim]` and `v_cache` the same with
`v_head_dim` lanes (MLA: V's head dim differs; its latent cache keeps no V tensor at all, V is
a view of the first lanes of K). Token `p` of a request
lives in slot `block_table[p // block_size] * block_size + p % block_size`. Allocate caches with
`torch.zeros`: padded reads of unused slots are masked out, but a NaN there would still poison
the masked-out products.

Backends: the torch reference (`kernels.torch_attention`, any device, the ground truth) and
flash-attn's paged kernel (`kernels.flash`, CUDA), picked per layer by `select_backend`.
"""

from __future__ import annotations

import enum
import math

import torch

from kernels import flash
from kernels.forward_context import get_forward_context
from kernels.torch_attention import paged_attention


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store the new tokens' K/V into their slots, in place.

    Args:
        key: `[T, num_kv_heads, head_dim]`, value: `[T, num_kv_heads, v_head_dim]`.
        k_cache, v_cache: `[num_blocks, block_size, num_kv_heads, head_dim | v_head_dim]`,
            contiguous.
        slot_mapping: `[T]` int64, `block_id * block_size + offset` per token.
    """
    write_cache(key, k_cache, slot_mapping)
    write_cache(value, v_cache, slot_mapping)


def write_cache(rows: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store `rows` `[T, heads, dim]` into the slots of one contiguous cache tensor, in place
    (a latent cache has only this one)."""
    # NOTE: .view (never .reshape): a copy would silently drop the write.
    flat = cache.view(-1, cache.shape[2], cache.shape[3])
    flat.index_copy_(0, slot_mapping, rows.to(cache.dtype))


class AttentionBackend(enum.Enum):
    """Which kernel attends a layer; each backend owns the KV layout it reads.

    Both read the same layout; flash-attn also needs `block_size` to be a multiple of
    `flash.PAGED_BLOCK_MULTIPLE` (`backend_for` picks it only then).
    """

    TORCH = "torch"
    FLASH_ATTN = "flash_attn"

    @property
    def block_size_multiple(self) -> int:
        """`block_size` must be a multiple of this."""
        return flash.PAGED_BLOCK_MULTIPLE if self is AttentionBackend.FLASH_ATTN else 1

    def kv_cache_shape(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[int, int, int, int]:
        """The shape of one layer's `k_cache` (its `v_cache`: the same with `v_head_dim`)."""
        if block_size < 1 or block_size % self.block_size_multiple:
            raise ValueError(
                f"the {self.value} backend needs block_size to be a positive multiple of "
                f"{self.block_size_multiple}, got {block_size}"
            )
        return (num_blocks, block_size, num_kv_heads, head_dim)

    def kv_cache_bytes_per_block(
        self,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        v_head_dim: int | None = None,
    ) -> int:
        """Bytes of K and V of one block of one layer; `v_head_dim` None: `head_dim`, 0: no V
        tensor (a latent cache)."""
        v_dim = head_dim if v_head_dim is None else v_head_dim
        lanes = head_dim + v_dim
        shape = self.kv_cache_shape(1, block_size, num_kv_heads, lanes)
        itemsize = torch.empty((), dtype=dtype).element_size()
        return math.prod(shape) * itemsize


def backend_for(
    device: torch.device,
    dtype: torch.dtype,
    head_dim: int,
    block_size: int,
    logits_soft_cap: float | None = None,
    *,
    v_head_dim: int | None = None,
    uses_alibi: bool = False,
) -> AttentionBackend:
    """The fast path when flash-attn can serve this geometry on `device`, else the reference."""
    if flash.is_supported(
        device, dtype, head_dim, block_size, logits_soft_cap,
        v_head_dim=v_head_dim, uses_alibi=uses_alibi,
    ):  # fmt: skip
        return AttentionBackend.FLASH_ATTN
    return AttentionBackend.TORCH


def select_backend(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    logits_soft_cap: float | None = None,
    *,
    v_cache: torch.Tensor | None = None,
    uses_alibi: bool = False,
) -> AttentionBackend:
    """`backend_for` one layer, read off its queries and its cache.

    Args:
        query: `[T, num_heads, head_dim]`, a sample of the layer's queries (device, dtype).
        k_cache: `[num_blocks, block_size, num_kv_heads, head_dim]`.
        logits_soft_cap: the layer's soft cap (needs flash-attn >= 2.6).
        v_cache: the layer's V cache when its head dim may differ from K's (MLA).
        uses_alibi: the layer adds ALiBi (needs flash-attn >= 2.4).
    """
    head_dim, block_size = query.shape[-1], k_cache.shape[1]
    v_head_dim = None if v_cache is None else v_cache.shape[-1]
    return backend_for(
        query.device, query.dtype, head_dim, block_size, logits_soft_cap,
        v_head_dim=v_head_dim, uses_alibi=uses_alibi,
    )  # fmt: skip


class PagedAttention(torch.nn.Module):
    """Attention of one decoder layer over the paged KV cache of the current forward context.

    Writes this step's K/V into `kv_caches[layer_idx]`, then attends. The backend is chosen on
    the first call (from the device, dtype and block size) and kept in `self.backend`; set it
    to `AttentionBackend.TORCH` beforehand to force the reference.

    Args:
        num_heads, num_kv_heads, head_dim: attention geometry (`num_heads % num_kv_heads == 0`).
        scale: softmax scale.
        layer_idx: index into `ForwardContext.kv_caches`.
        sliding_window: HF semantics, `p - k < sliding_window`; None: unlimited.
        logits_soft_cap: Gemma2 soft-capping; None: off.
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        layer_idx: int,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.layer_idx = layer_idx
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap
        self.backend: AttentionBackend | None = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query `[T, H, D]`, key/value `[T, Hkv, D]` -> `[T, H, D]`."""
        ctx = get_forward_context()
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        meta = ctx.attn_metadata
        write_kv_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        if self.backend is None:
            self.backend = select_backend(query, k_cache, self.logits_soft_cap)
        if self.backend is AttentionBackend.FLASH_ATTN:
            return flash.paged_attention(
                query,
                k_cache,
                v_cache,
                meta,
                scale=self.scale,
                sliding_window=self.sliding_window,
                logits_soft_cap=self.logits_soft_cap,
            )
        # the fresh rows equal what the cache now holds only in the cache's dtype
        same_dtype = key.dtype == k_cache.dtype and value.dtype == v_cache.dtype
        return paged_attention(
            query,
            k_cache,
            v_cache,
            meta,
            scale=self.scale,
            sliding_window=self.sliding_window,
            logits_soft_cap=self.logits_soft_cap,
            new_kv=(key, value) if same_dtype else None,
        )

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"layer={self.layer_idx}, window={self.sliding_window}, "
            f"soft_cap={self.logits_soft_cap}, backend={self.backend}"
        )
