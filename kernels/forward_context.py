"""The per-step forward context: the only global mutable state in meshserve, and it is guarded.

The model runner enters `forward_context(ctx)` around one model forward; every `PagedAttention`
layer reads the step's `AttentionMetadata` and its own layer's KV cache from it, so model code
never threads attention state through its call signatures. Nesting is an error, and so is
reading the context outside a forward. The context is a `ContextVar`, so two engines running in
two threads (or two asyncio tasks) never see each other's step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from kernels.metadata import AttentionMetadata


@dataclass(frozen=True, slots=True)
class ForwardContext:
    """What the attention layers of one model forward need.

    Args:
        attn_metadata: the flattened step (query/sequence lengths, block table, slot mapping).
        kv_caches: per layer `(k_cache, v_cache)`, each
            `[num_blocks, block_size, num_kv_heads, head_dim]`; allocate them with `torch.zeros`.
        state: the step's recurrent state of state-space (Mamba) layers, owned by the LM
            engine (`lm_service.models.state_step.StateStep`); None for attention-only models.
        cross_metadata: the step's cross-attention side
            (`kernels.cross_attention.CrossAttentionMetadata`); None for decoder-only models.
        cross_kv_caches: per cross-attention layer `(k_cache, v_cache)` of encoder K/V, in
            the self-attention layout.
    """

    attn_metadata: AttentionMetadata
    kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    state: Any = None
    cross_metadata: Any = None
    cross_kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()


_CURRENT: ContextVar[ForwardContext | None] = ContextVar("meshserve_forward_context", default=None)


@contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    """Make `ctx` the current forward context for the duration of the `with` block."""
    if _CURRENT.get() is not None:
        raise RuntimeError(
            "forward_context is already active: nested model forwards are not allowed"
        )
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def get_forward_context() -> ForwardContext:
    """The current forward context; RuntimeError outside `with forward_context(...)`."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError(
            "no forward context: run the model inside `with forward_context(ForwardContext(...))`"
        )
    return ctx


def has_forward_context() -> bool:
    """True inside `with forward_context(...)` (lets a model fall back to plain attention)."""
    return _CURRENT.get() is not None
