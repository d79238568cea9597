"""The attention function transformers calls for the Transformers fallback: `meshserve_paged`.

Registered with transformers' `AttentionInterface`, it receives each attention layer's
q/k/v of the flattened step (one sequence of T tokens), writes the new K/V into the layer's
paged cache and attends over it, so requests never see each other. The n-th attention call of
a forward uses KV cache n, whatever HF numbers the layer; a probe forward (`probing()`) only
records each layer's KV geometry. Model-specific attention code that HF does not route through
the interface reaches the same function through our shims (`lm_service.models.alibi_attention`),
and MLA layers (`lm_service.models.mla`) hand it their compressed latent instead of K and V.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernels import flash
from kernels.attention import AttentionBackend, select_backend, write_cache, write_kv_cache
from kernels.forward_context import get_forward_context
from kernels.torch_attention import paged_attention
from lm_service.models.mla import latent_attention_of
from protos.errors import Unsupported

ATTENTION_NAME = "meshserve_paged"
BACKEND_ATTR = "meshserve_attention_backend"


@dataclass(frozen=True, slots=True)
class AttentionLayerInfo:
    """What one attention layer showed when probed: its KV shape and window.

    `layer_idx` is the call's rank in the forward (the KV cache it uses), not HF's number.
    `values_in_keys`: an MLA layer, whose cache holds the latent and V is its first lanes.
    """

    layer_idx: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int | None
    v_head_dim: int | None = None
    values_in_keys: bool = False


# Layer indices seen during the current forward (None outside `counting_calls`), and the
# per-layer info collected while probing (None unless probing).
_CALLS: ContextVar[list[int] | None] = ContextVar("meshserve_attention_calls", default=None)
_PROBE: ContextVar[list[AttentionLayerInfo] | None] = ContextVar(
    "meshserve_attention_probe", default=None
)


def register_attention() -> None:
    """Registers `meshserve_paged` with transformers (idempotent).

    NOTE: the mask function is a no-op: HF builds no dense mask, our kernel is causal itself.
    """
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def paged_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    sliding_window: int | None = None,
    alibi_slopes: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function over the paged KV cache.

    Args:
        query: [1, H, T, D]; key: [1, Hkv, T, D], value: [1, Hkv, T, Dv] (rotary already
            applied by HF). For an MLA layer, key is the latent [1, 1, T, lora + rope] and
            value a view of its first lora lanes.
        alibi_slopes: [H] float32, from our ALiBi shims; None: no ALiBi.

    Returns:
        ([1, T, H, Dv], None); for an MLA layer Dv is its `v_head_dim`.
    """
    layer_idx = _layer_index(module)
    latent = latent_attention_of(module)
    probe = _PROBE.get()
    if probe is not None:
        is_latent = latent is not None
        if is_latent and (key.shape[1], key.shape[3]) != (1, latent.cached_lanes):
            raise Unsupported(
                f"{type(module).__name__} did not hand its MLA latent to attention (key "
                f"{tuple(key.shape)}): this transformers version's MLA code is not the one "
                "lm_service.models.mla expects"
            )
        v_dim = value.shape[3]
        own_v_dim = v_dim if is_latent or v_dim != key.shape[3] else None  # None: K's, as usual
        probe.append(
            AttentionLayerInfo(
                layer_idx, key.shape[1], key.shape[3], sliding_window, own_v_dim, is_latent
            )
        )
        out_dim = latent.v_head_dim if is_latent else v_dim
        return query.new_zeros(1, query.shape[2], query.shape[1], out_dim), None
    _CALLS.get().append(layer_idx)
    ctx = get_forward_context()
    k_cache, v_cache = ctx.kv_caches[layer_idx]
    slots = ctx.attn_metadata.slot_mapping
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)  # [T, Hkv, D]
    if latent is not None:
        q = latent.absorb_query(q)  # [T, H, lora + rope]
        write_cache(k, k_cache, slots)  # the latent only: V is a view of its first lanes
    else:
        write_kv_cache(k, value[0].transpose(0, 1), k_cache, v_cache, slots)
    attend = _attention_function(module, q, k_cache, v_cache, softcap, alibi_slopes)
    out = attend(
        q,
        k_cache,
        v_cache,
        ctx.attn_metadata,
        scale=query.shape[-1] ** -0.5 if scaling is None else scaling,
        sliding_window=sliding_window,
        logits_soft_cap=softcap or None,
        alibi_slopes=alibi_slopes,
    )  # [T, H, Dv]
    if latent is not None:
        out = latent.expand_output(out)  # [T, H, v_head_dim]
    return out.unsqueeze(0), None


def _attention_function(
    module: nn.Module,
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
) -> Callable[..., torch.Tensor]:
    """flash-attn's paged kernel where it can run this layer, else the torch reference;
    chosen on the first call and kept on the module."""
    backend = getattr(module, BACKEND_ATTR, None)
    if backend is None:
        backend = select_backend(
            query, k_cache, softcap, v_cache=v_cache, uses_alibi=alibi_slopes is not None
        )
        setattr(module, BACKEND_ATTR, backend)
    return flash.paged_attention if backend is AttentionBackend.FLASH_ATTN else paged_attention


def _layer_index(module: nn.Module) -> int:
    """The KV cache of this call: how many attention calls came before it in this forward.

    NOTE: every forward runs the same layers in the same order, so call ranks are stable.
    """
    probe = _PROBE.get()
    if probe is not None:
        return len(probe)
    calls = _CALLS.get()
    if calls is None:
        raise Unsupported(
            f"{type(module).__name__} attention ran outside TransformersForCausalLM.forward"
        )
    return len(calls)


@contextmanager
def probing() -> Iterator[list[AttentionLayerInfo]]:
    """Inside: attention calls only record their layer's info into the yielded list."""
    with _collecting(_PROBE, []) as found:
        yield found


@contextmanager
def counting_calls() -> Iterator[list[int]]:
    """Inside: attention calls run on the paged cache; the yielded list gets their ranks."""
    with _collecting(_CALLS, []) as calls:
        yield calls


@contextmanager
def _collecting(var: ContextVar[Any], value: Any) -> Iterator[Any]:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)
