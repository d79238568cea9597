"""The interface every language-model implementation follows, and the KV cache it needs.

An implementation runs one flattened step: the tokens of every scheduled request laid end to
end (`T` tokens in all). Attention state lives in the paged KV cache that the runner allocates
from `kv_cache_spec()` and hands over through `kernels.forward_context`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class KVCacheSpec:
    """What the paged KV cache of one model looks like.

    The engine sizes and allocates the cache from it (`lm_service.engine.kv_cache`) in the
    layout the attention backend reports (`kernels.attention.AttentionBackend`).

    Args:
        num_layers: attention layers, in the order of `kv_caches`.
        num_kv_heads: key/value heads of every layer.
        head_dim: size of one head.
        dtype: element type of the cache (the model's dtype).
        sliding_windows: per layer, the window in tokens (None: full attention).
        v_head_dim: size of one value head; None: `head_dim`.
        values_in_keys: MLA's latent cache: one tensor per layer holds the compressed latent
            (`head_dim` = kv_lora_rank + rope dim, one head); V is a view of its first
            `v_head_dim` lanes, and no V tensor is allocated.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    sliding_windows: tuple[int | None, ...]
    v_head_dim: int | None = None
    values_in_keys: bool = False

    def __post_init__(self) -> None:
        if len(self.sliding_windows) != self.num_layers:
            raise ValueError(
                f"sliding_windows has {len(self.sliding_windows)} entries "
                f"for {self.num_layers} layers"
            )
        if self.values_in_keys and not 0 < self.value_head_dim <= self.head_dim:
            raise ValueError(
                f"values read from the keys need 0 < v_head_dim <= head_dim {self.head_dim}, "
                f"got {self.v_head_dim}"
            )

    @property
    def value_head_dim(self) -> int:
        """The value head dim the attention reads."""
        return self.head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def stored_value_head_dim(self) -> int:
        """Lanes of the V tensor the engine allocates (0: V lives inside K)."""
        return 0 if self.values_in_keys else self.value_head_dim


@dataclass(frozen=True, slots=True)
class StateCacheSpec:
    """The recurrent state one request needs across the model's state-space (Mamba) layers.

    The engine holds `num_slots` such states per layer (`lm_service.engine.state_cache`); a
    running request owns one slot. Unlike KV blocks, a slot's size does not grow with the
    sequence, and a slot holds the state after the request's last computed token only.

    Args:
        num_layers: Mamba layers, in the order of the state caches.
        conv_shape: one slot's causal-conv state, `[conv_channels, conv_kernel - 1]` (the
            last inputs the convolution still needs).
        ssm_shape: one slot's SSM state, `[inner, state_size]` (Mamba) or
            `[num_heads, head_dim, state_size]` (Mamba2).
        conv_dtype: the conv state's dtype (the model's).
        ssm_dtype: the SSM state's dtype; float32, as HF's torch scan accumulates it.
    """

    num_layers: int
    conv_shape: tuple[int, ...]
    ssm_shape: tuple[int, ...]
    conv_dtype: torch.dtype
    ssm_dtype: torch.dtype = torch.float32

    @property
    def bytes_per_slot(self) -> int:
        conv = math.prod(self.conv_shape) * _itemsize(self.conv_dtype)
        ssm = math.prod(self.ssm_shape) * _itemsize(self.ssm_dtype)
        return self.num_layers * (conv + ssm)


@dataclass(frozen=True, slots=True)
class CrossAttentionSpec:
    """The cross-attention cache an encoder-decoder model needs per request.

    The engine holds blocks of `block_size` encoder positions per cross-attention layer, in
    the self-attention layout (`lm_service.engine.cross_kv_cache`); a request owns
    `ceil(num_encoder_tokens / block_size)` of them from admission to finish.

    Args:
        num_layers: cross-attention layers, in the order of `cross_kv_caches`.
        num_kv_heads, head_dim: their geometry.
        dtype: element type of the cache.
        encoder_hidden_size: the width of the encoder states a request carries.
        max_encoder_len: the most encoder positions one request may carry.
        requires_encoder_states: every request must carry them (Whisper, BART).
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    encoder_hidden_size: int
    max_encoder_len: int
    requires_encoder_states: bool = True

    def bytes_per_block(self, block_size: int) -> int:
        """K and V of one block across all cross-attention layers."""
        per_layer = 2 * block_size * self.num_kv_heads * self.head_dim * _itemsize(self.dtype)
        return self.num_layers * per_layer


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class BaseCausalLM(nn.Module, ABC):
    """A decoder language model over a flattened batch and a paged KV cache.

    Subclasses set `impl_name` ("native" or "transformers") and `uses_mrope` (True when
    `positions` are `[3, T]` M-RoPE positions rather than `[T]`).
    """

    impl_name: ClassVar[str]
    uses_mrope: bool = False
    tasks: ClassVar[tuple[str, ...]] = ("generate",)  # what the gateway may serve with it

    @abstractmethod
    def get_input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> token embeddings [T, hidden] (what `inputs_embeds` replaces)."""

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Runs one step; K/V go through the forward context.

        Args:
            input_ids: [T] int64, or None when `inputs_embeds` is given.
            positions: [T] int64, or [3, T] for M-RoPE models.
            inputs_embeds: [T, hidden], e.g. token embeddings with media rows scattered in.

        Returns:
            hidden states [T, hidden] after the final norm.
        """

    @abstractmethod
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] float32."""

    @abstractmethod
    def kv_cache_spec(self) -> KVCacheSpec:
        """The per-layer KV cache this model reads and writes."""

    def state_cache_spec(self) -> StateCacheSpec | None:
        """The per-request recurrent state of its Mamba layers; None: attention only."""
        return None

    def cross_attention_spec(self) -> CrossAttentionSpec | None:
        """The encoder K/V its cross-attention layers read; None: decoder only."""
        return None

    def encode_prompt(
        self, prompt: list[int], mm_spans: Sequence[Any] = ()
    ) -> tuple[list[int], torch.Tensor] | None:
        """Models whose encoder reads the prompt (BART; Florence-2 with its image spans): the
        prompt through it -> (the decoder's prompt, encoder states [S, hidden]). None: the
        encoder states come with the request (Whisper's audio), or there is no encoder."""
        return None


def sliding_windows_of(text_config: object) -> tuple[int | None, ...]:
    """Per-layer sliding window as HF applies it: `layer_types` when the config has them
    (Qwen2, Gemma2), else `sliding_window` on every layer (Mistral, Mixtral)."""
    num_layers = int(text_config.num_hidden_layers)
    window = getattr(text_config, "sliding_window", None) or None
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types:
        return tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    return (window,) * num_layers
