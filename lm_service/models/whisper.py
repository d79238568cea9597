"""Native Whisper decoder over the paged KV cache, with cross-attention over encoder states.

Follows HF's modeling_whisper `WhisperDecoder`: token embeddings plus learned positions,
pre-LayerNorm layers of causal self-attention, cross-attention over the audio encoder's
output and a GELU MLP, a final LayerNorm, and the output projection tied to the embeddings.
The encoder runs elsewhere (the audio encoder service, or the offline `LLM`); a request
brings its output as `encoder_states`, whose K/V each layer computes once, at the request's
first step, into the cross-attention cache (`kernels.cross_attention`).

NOTE: queries are scaled by `head_dim ** -0.5` before attention and the kernels run with
scale 1.0, as HF does ("the original order of scaling"): the other order rounds differently.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kernels.attention import PagedAttention
from kernels.cross_attention import CrossAttention
from kernels.forward_context import get_forward_context
from lm_service.models.base import BaseCausalLM, CrossAttentionSpec, KVCacheSpec
from lm_service.models.loader import iterate_weights
from lm_service.models.named_weights import load_named_weights

ENCODER_PREFIX = "model.encoder."
DECODER_PREFIX = "model.decoder."


def _linear(n_in: int, n_out: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias, device="meta", dtype=dtype)


class WhisperAttention(nn.Module):
    """q/k/v/out projections (k without bias, as HF) around a paged or cross attention."""

    def __init__(self, config: Any, layer_idx: int, dtype: torch.dtype, *, cross: bool) -> None:
        super().__init__()
        width, self.num_heads = int(config.d_model), int(config.decoder_attention_heads)
        self.head_dim = width // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = _linear(width, width, True, dtype)
        self.k_proj = _linear(width, width, False, dtype)
        self.v_proj = _linear(width, width, True, dtype)
        self.out_proj = _linear(width, width, True, dtype)
        heads = (self.num_heads, self.num_heads, self.head_dim)
        self.attn = (
            CrossAttention(*heads, scale=1.0, layer_idx=layer_idx)
            if cross
            else PagedAttention(*heads, scale=1.0, layer_idx=layer_idx)
        )
        self.cross = cross

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.num_heads, self.head_dim)  # [N, H, D]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [T, width] -> [T, width]; cross-attention reads its K/V source from the
        forward context (encoder states of the requests that start this step)."""
        q = self._heads(self.q_proj(hidden) * self.scaling)
        if self.cross:
            states = get_forward_context().cross_metadata.encoder_states  # [N, width] or None
            k = v = None
            if states is not None:
                states = states.to(hidden.dtype)
                k, v = self._heads(self.k_proj(states)), self._heads(self.v_proj(states))
        else:
            k, v = self._heads(self.k_proj(hidden)), self._heads(self.v_proj(hidden))
        out = self.attn(q, k, v)  # [T, H, D]
        return self.out_proj(out.reshape(hidden.shape[0], -1))


class WhisperDecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__()
        width, ffn = int(config.d_model), int(config.decoder_ffn_dim)
        self.self_attn = WhisperAttention(config, layer_idx, dtype, cross=False)
        self.self_attn_layer_norm = nn.LayerNorm(width, device="meta", dtype=dtype)
        self.encoder_attn = WhisperAttention(config, layer_idx, dtype, cross=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(width, device="meta", dtype=dtype)
        self.fc1 = _linear(width, ffn, True, dtype)
        self.fc2 = _linear(ffn, width, True, dtype)
        self.final_layer_norm = nn.LayerNorm(width, device="meta", dtype=dtype)
        from transformers.activations import ACT2FN

        self.act = ACT2FN[config.activation_function]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.self_attn_layer_norm(hidden))
        hidden = hidden + self.encoder_attn(self.encoder_attn_layer_norm(hidden))
        return hidden + self.fc2(self.act(self.fc1(self.final_layer_norm(hidden))))


class WhisperDecoder(nn.Module):
    """HF's `model.decoder`, under the same parameter names."""

    def __init__(self, config: Any, dtype: torch.dtype) -> None:
        super().__init__()
        width = int(config.d_model)
        self.embed_scale = width**0.5 if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, width, device="meta", dtype=dtype)
        self.embed_positions = nn.Embedding(
            config.max_target_positions, width, device="meta", dtype=dtype
        )
        self.layers = nn.ModuleList(
            WhisperDecoderLayer(config, i, dtype) for i in range(config.decoder_layers)
        )
        self.layer_norm = nn.LayerNorm(width, device="meta", dtype=dtype)


class WhisperForConditionalGeneration(BaseCausalLM):
    """Whisper's decoder on the engine; the encoder output comes with each request.

    Args:
        config: the checkpoint's WhisperConfig.
        dtype: parameter and cache dtype.
        device: where `load_weights` materializes the parameters.
        suppress_tokens: ids HF's generate never lets the model emit (generation config's
            `suppress_tokens`); their logits are -inf at every step, as there.
    """

    impl_name = "native"
    tasks = ("transcription",)

    def __init__(
        self,
        config: Any,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        suppress_tokens: Iterable[int] = (),
    ) -> None:
        super().__init__()
        self.config, self.dtype, self.device = config, dtype, torch.device(device)
        self.decoder = WhisperDecoder(config, dtype)
        self.tied = bool(getattr(config, "tie_word_embeddings", True))
        self.proj_out = (
            None if self.tied else _linear(config.d_model, config.vocab_size, False, dtype)
        )
        self.suppress_tokens = sorted({int(t) for t in suppress_tokens})

    @classmethod
    def from_checkpoint(
        cls, model_path: Path, config: Any, *, dtype: torch.dtype, device: str | torch.device
    ) -> WhisperForConditionalGeneration:
        """Builds the decoder and reads only its weights (the encoder's are never loaded)."""
        from transformers import GenerationConfig

        try:
            suppress = GenerationConfig.from_pretrained(model_path).suppress_tokens or ()
        except OSError:  # no generation_config.json: the model config's, if any
            suppress = getattr(config, "suppress_tokens", None) or ()
        model = cls(config, dtype=dtype, device=device, suppress_tokens=suppress)
        wanted = lambda name: not name.startswith(ENCODER_PREFIX)  # noqa: E731
        model.load_weights(iterate_weights(model_path, wanted=wanted))
        return model.eval()

    # --- BaseCausalLM ---------------------------------------------------------------------
    def get_input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(input_ids) * self.decoder.embed_scale  # [T, width]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = (
            inputs_embeds if inputs_embeds is not None else self.get_input_embeddings(input_ids)
        )
        # NOTE: positions stay below max_target_positions: the engine's max_model_len is it
        hidden = hidden.to(self.dtype) + self.decoder.embed_positions(positions)  # [T, width]
        for layer in self.decoder.layers:
            hidden = layer(hidden)
        return self.decoder.layer_norm(hidden)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.decoder.embed_tokens.weight if self.proj_out is None else self.proj_out.weight
        logits = F.linear(hidden_states, weight).float()  # [N, vocab]
        if self.suppress_tokens:
            logits[:, self.suppress_tokens] = float("-inf")
        return logits

    def kv_cache_spec(self) -> KVCacheSpec:
        heads = int(self.config.decoder_attention_heads)
        layers = int(self.config.decoder_layers)
        return KVCacheSpec(
            layers, heads, int(self.config.d_model) // heads, self.dtype, (None,) * layers
        )

    def cross_attention_spec(self) -> CrossAttentionSpec:
        heads = int(self.config.decoder_attention_heads)
        return CrossAttentionSpec(
            num_layers=int(self.config.decoder_layers),
            num_kv_heads=heads,
            head_dim=int(self.config.d_model) // heads,
            dtype=self.dtype,
            encoder_hidden_size=int(self.config.d_model),
            max_encoder_len=int(self.config.max_source_positions),
        )

    # --- weights --------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Fills every decoder parameter from HF-named weights (strictly: see
        `named_weights.load_named_weights`)."""
        return load_named_weights(self, weights, self._target, self.device, "Whisper decoder")

    def _target(self, name: str) -> str | None:
        """Our parameter for a checkpoint name; None for what the decoder does not read."""
        if name.startswith(DECODER_PREFIX):
            return "decoder." + name.removeprefix(DECODER_PREFIX)
        if name == "proj_out.weight":
            return None if self.tied else name
        if name.startswith(ENCODER_PREFIX):
            return None
        return name
