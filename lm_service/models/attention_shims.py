"""Bloom, MPT and Falcon on the paged KV cache: their attention modules, re-entered.

HF computes these models' attention in their own code (ALiBi, fused QKV layouts), not through
transformers' attention interface. `install_attention_shims` replaces each attention module's
forward with a shim that uses the module's own weights and HF's own q/k/v split, then hands
q/k/v to `meshserve_paged` (`lm_service.models.hf_attention`) with the layer's ALiBi slopes:

- Bloom: `q.k * inv_norm_factor + slope * k`, the paper's slopes;
- MPT: `clip(qkv)`, `q.k * softmax_scale + slope * (k - S + 1)`, MPT's slopes;
- Falcon: rotary (`alibi=False`: falcon-7b/40b/180b; multi-query or grouped KV heads in the
  new decoder architecture, kept un-broadcast in the cache), or ALiBi (`alibi=True`:
  falcon-rw), where HF scales the bias with the scores: `(q.k + slope * k) / sqrt(head_dim)`.

The models are built with HF's eager attention classes (Falcon picks its class by name), then
switched to an attention implementation whose mask function builds no dense [T, T] mask (the
shims never read one): `meshserve_paged` for Bloom and Falcon, whose code takes a None mask,
and for MPT, whose code casts the mask (`.to(torch.bool)`), one that returns a 1-element mask.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kernels.alibi import alibi_slopes, mpt_alibi_slopes
from lm_service.models.hf_attention import ATTENTION_NAME, paged_attention_forward

PLACEHOLDER_MASK_NAME = "meshserve_paged_placeholder_mask"
# model_type -> the attention implementation its HF model runs with once shimmed
SHIMMED_MODEL_TYPES: dict[str, str] = {
    "bloom": ATTENTION_NAME,
    "mpt": PLACEHOLDER_MASK_NAME,
    "falcon": ATTENTION_NAME,
}
BUILD_ATTN_IMPLEMENTATION = "eager"  # Falcon picks its attention class by name at build time
MPT_HF_ALIBI_BIAS_MAX = 8.0


def needs_attention_shims(text_config: Any) -> bool:
    return getattr(text_config, "model_type", None) in SHIMMED_MODEL_TYPES


def install_attention_shims(hf_model: nn.Module, text_config: Any) -> int:
    """Replaces the forward of every Bloom/MPT/Falcon attention module; returns how many."""
    make = _SHIMS[text_config.model_type]
    found = 0
    for module in hf_model.modules():
        if type(module).__name__ in _ATTENTION_CLASSES:
            module.forward = types.MethodType(make(module, text_config), module)
            found += 1
    _register_placeholder_mask()
    hf_model.config._attn_implementation = SHIMMED_MODEL_TYPES[text_config.model_type]
    return found


def _register_placeholder_mask() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(PLACEHOLDER_MASK_NAME, paged_attention_forward)
    AttentionMaskInterface.register(PLACEHOLDER_MASK_NAME, _placeholder_mask)


def _placeholder_mask(
    *args: Any, device: torch.device | None = None, **kwargs: Any
) -> torch.Tensor:
    """A 1-element "mask" for model code that casts the mask it builds; no shim reads it."""
    return torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device)


def _attend(
    module: nn.Module,
    query: torch.Tensor,  # [B, H, T, D]
    key: torch.Tensor,  # [B, Hkv, T, D]
    value: torch.Tensor,  # [B, Hkv, T, D]
    scale: float,
    slopes: torch.Tensor | None,
) -> torch.Tensor:
    """`[B, T, H * D]`: the paged attention of the step's flattened sequence."""
    batch, _, length, _ = query.shape
    out, _ = paged_attention_forward(
        module, query, key, value, None, scaling=scale, alibi_slopes=slopes
    )  # [1, T, H, D]
    return out.reshape(batch, length, -1)


def _slopes_on(slopes: torch.Tensor, like: nn.Linear) -> torch.Tensor:
    return slopes.to(device=like.weight.device, dtype=torch.float32)


def _bloom(module: nn.Module, config: Any) -> Callable[..., Any]:
    slopes = _slopes_on(alibi_slopes(module.num_heads), module.query_key_value)

    def forward(
        self: nn.Module, hidden_states: torch.Tensor, residual: torch.Tensor, **kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        query, key, value = self._reshape(self.query_key_value(hidden_states))  # [B, H, T, D]
        out = _attend(self, query, key, value, self.inv_norm_factor, slopes)
        # NOTE: eval only: HF's dropout_add is residual + dropout(out), dropout off
        return self.dense(out) + residual, None

    return forward


def _mpt(module: nn.Module, config: Any) -> Callable[..., Any]:
    # NOTE: parity with HF, whose MptModel adds ALiBi whatever `attn_config.alibi` says, always
    # with its default alibi_bias_max of 8 (it never passes the config's), and has no qk_ln.
    # MosaicML's checkpoints all use alibi=True and alibi_bias_max=8.
    slopes = _slopes_on(mpt_alibi_slopes(module.n_heads, MPT_HF_ALIBI_BIAS_MAX), module.Wqkv)

    def forward(
        self: nn.Module, hidden_states: torch.Tensor, **kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        batch, length = hidden_states.shape[:2]
        mixed = self.Wqkv(hidden_states)
        if self.clip_qkv:
            mixed = mixed.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        heads = [
            x.reshape(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
            for x in mixed.chunk(3, dim=2)
        ]  # 3 x [B, H, T, D]
        return self.out_proj(_attend(self, *heads, self.softmax_scale, slopes)), None

    return forward


def _falcon(module: nn.Module, config: Any) -> Callable[..., Any]:
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    uses_alibi = bool(config.alibi)
    # HF adds the ALiBi tensor to the raw scores, then scales both by 1/sqrt(head_dim)
    slopes = (
        _slopes_on(alibi_slopes(module.num_heads) * module.inv_norm_factor, module.dense)
        if uses_alibi
        else None
    )

    def forward(
        self: nn.Module,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        query, key, value = _falcon_heads(self, self.query_key_value(hidden_states))
        if not uses_alibi:
            cos, sin = position_embeddings
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
        return self.dense(_attend(self, query, key, value, self.inv_norm_factor, slopes)), None

    return forward


def _falcon_heads(
    module: nn.Module, fused: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Falcon's fused QKV -> q `[B, H, T, D]`, k/v `[B, Hkv, T, D]`.

    NOTE: HF's `_split_heads` broadcasts the new decoder architecture's grouped K/V to every
    query head; we keep them grouped (query head h reads KV head h // G, HF's layout).
    """
    batch, length, _ = fused.shape
    num_heads, head_dim = module.num_heads, module.head_dim
    if module.new_decoder_architecture:
        num_kv = module.num_kv_heads
        qkv = fused.view(batch, length, num_kv, num_heads // num_kv + 2, head_dim)
        query = qkv[:, :, :, :-2].flatten(2, 3)  # [B, T, H, D]
        key, value = qkv[:, :, :, -2], qkv[:, :, :, -1]  # [B, T, Hkv, D]
    else:
        query, key, value = module._split_heads(fused)  # MHA, or multi-query: one KV head
    return tuple(x.transpose(1, 2) for x in (query, key, value))  # type: ignore[return-value]


_SHIMS: dict[str, Callable[[nn.Module, Any], Callable[..., Any]]] = {
    "bloom": _bloom,
    "mpt": _mpt,
    "falcon": _falcon,
}
_ATTENTION_CLASSES = frozenset({"BloomAttention", "MptAttention", "FalconAttention"})
