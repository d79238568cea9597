"""Native BART (BartForConditionalGeneration) and Florence-2's BART language model: the
encoder runs in the LM service on the prompt (Florence-2's image embeddings, from the image
encoder service, scattered into its image-token positions first), the decoder on the engine
with cross-attention over the encoder states.

Follows HF's modeling_bart: shared token embeddings (scaled when `scale_embedding`), learned
positions offset by 2, a LayerNorm on the embeddings, POST-LayerNorm layers (attention or MLP,
residual add, then the norm), a GELU MLP, the head tied to the embeddings plus
`final_logits_bias`. The engine calls `encode_prompt` when a request arrives: the prompt's
tokens go through the encoder (one dense pass, every token seeing every other) and the decoder
starts from `decoder_start_token_id`, followed by `forced_bos_token_id` when the generation
config forces one (HF's ForcedBOSTokenLogitsProcessor forces exactly that token first; here
it is part of the decoder prompt, so it is not among the returned tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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

POSITION_OFFSET = 2  # HF's BartLearnedPositionalEmbedding: position p reads row p + 2


def _linear(n_in: int, n_out: int, dtype: torch.dtype) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=True, device="meta", dtype=dtype)


def _norm(width: int, dtype: torch.dtype) -> nn.LayerNorm:
    return nn.LayerNorm(width, device="meta", dtype=dtype)


class BartAttention(nn.Module):
    """q/k/v/out projections; `kind` "encoder" (dense, bidirectional), "self" (paged, causal)
    or "cross" (over the request's encoder K/V)."""

    def __init__(
        self, width: int, num_heads: int, layer_idx: int, dtype: torch.dtype, kind: str
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.kind = num_heads, width // num_heads, kind
        self.scaling = self.head_dim**-0.5
        self.q_proj, self.k_proj = _linear(width, width, dtype), _linear(width, width, dtype)
        self.v_proj, self.out_proj = _linear(width, width, dtype), _linear(width, width, dtype)
        heads = (num_heads, num_heads, self.head_dim)
        if kind == "self":
            self.attn = PagedAttention(*heads, scale=self.scaling, layer_idx=layer_idx)
        elif kind == "cross":
            self.attn = CrossAttention(*heads, scale=self.scaling, layer_idx=layer_idx)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.num_heads, self.head_dim)  # [N, H, D]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [T, width] -> [T, width]."""
        q = self._heads(self.q_proj(hidden))
        if self.kind == "encoder":
            k, v = self._heads(self.k_proj(hidden)), self._heads(self.v_proj(hidden))
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), scale=self.scaling
            ).transpose(0, 1)  # [T, H, D]
        elif self.kind == "cross":
            states = get_forward_context().cross_metadata.encoder_states  # [N, width] or None
            k = v = None
            if states is not None:
                states = states.to(hidden.dtype)
                k, v = self._heads(self.k_proj(states)), self._heads(self.v_proj(states))
            out = self.attn(q, k, v)
        else:
            out = self.attn(q, self._heads(self.k_proj(hidden)), self._heads(self.v_proj(hidden)))
        return self.out_proj(out.reshape(hidden.shape[0], -1))


class BartLayer(nn.Module):
    """An encoder layer (`cross=False`, dense attention) or a decoder layer (paged causal
    self-attention, then cross-attention); post-LN either way."""

    def __init__(self, config: Any, layer_idx: int, dtype: torch.dtype, *, decoder: bool) -> None:
        super().__init__()
        width = int(config.d_model)
        heads = int(config.decoder_attention_heads if decoder else config.encoder_attention_heads)
        ffn = int(config.decoder_ffn_dim if decoder else config.encoder_ffn_dim)
        kind = "self" if decoder else "encoder"
        self.self_attn = BartAttention(width, heads, layer_idx, dtype, kind)
        self.self_attn_layer_norm = _norm(width, dtype)
        if decoder:
            self.encoder_attn = BartAttention(width, heads, layer_idx, dtype, "cross")
            self.encoder_attn_layer_norm = _norm(width, dtype)
        self.fc1, self.fc2 = _linear(width, ffn, dtype), _linear(ffn, width, dtype)
        self.final_layer_norm = _norm(width, dtype)
        from transformers.activations import ACT2FN

        self.act = ACT2FN[config.activation_function]
        self.decoder = decoder

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.self_attn_layer_norm(hidden + self.self_attn(hidden))
        if self.decoder:
            hidden = self.encoder_attn_layer_norm(hidden + self.encoder_attn(hidden))
        return self.final_layer_norm(hidden + self.fc2(self.act(self.fc1(hidden))))


class BartStack(nn.Module):
    """HF's `model.encoder` or `model.decoder`, under the same parameter names; the token
    embeddings are the shared module."""

    def __init__(
        self, config: Any, shared: nn.Embedding, dtype: torch.dtype, *, decoder: bool
    ) -> None:
        super().__init__()
        width = int(config.d_model)
        self.embed_scale = width**0.5 if config.scale_embedding else 1.0
        self.embed_tokens = shared
        self.embed_positions = nn.Embedding(
            config.max_position_embeddings + POSITION_OFFSET, width, device="meta", dtype=dtype
        )
        self.layernorm_embedding = _norm(width, dtype)
        num_layers = int(config.decoder_layers if decoder else config.encoder_layers)
        self.layers = nn.ModuleList(
            BartLayer(config, i, dtype, decoder=decoder) for i in range(num_layers)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, positions [T] (or `inputs_embeds` [T, width], already scaled) ->
        hidden [T, width]."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale
        hidden = inputs_embeds + self.embed_positions(positions + POSITION_OFFSET)
        hidden = self.layernorm_embedding(hidden)
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class BartModel(nn.Module):
    def __init__(self, config: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.shared = nn.Embedding(config.vocab_size, config.d_model, device="meta", dtype=dtype)
        self.encoder = BartStack(config, self.shared, dtype, decoder=False)
        self.decoder = BartStack(config, self.shared, dtype, decoder=True)


class BartForConditionalGeneration(BaseCausalLM):
    """BART on the engine: `encode_prompt` runs the encoder, the decoder runs paged.

    Args:
        config: the BartConfig (Florence-2: its `text_config`).
        decoder_prompt: what the decoder starts from (decoder start, then a forced BOS).
        prefix: where the language model's weights sit in the checkpoint ("model." for BART,
            "model.language_model." for Florence-2, whose other weights are the tower's).
    """

    impl_name = "native"

    def __init__(
        self,
        config: Any,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        decoder_prompt: tuple[int, ...] = (),
        prefix: str = "model.",
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.config, self.dtype, self.device = config, dtype, torch.device(device)
        self.model = BartModel(config, dtype)
        self.tied = bool(getattr(config, "tie_word_embeddings", True))
        self.lm_head = None if self.tied else _linear(config.d_model, config.vocab_size, dtype)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size, dtype=dtype))
        self.decoder_prompt = decoder_prompt or (int(config.decoder_start_token_id),)

    @classmethod
    def from_checkpoint(
        cls, model_path: Path, config: Any, *, dtype: torch.dtype, device: str | torch.device
    ) -> BartForConditionalGeneration:
        from transformers import GenerationConfig

        text = config.get_text_config()
        try:
            generation = GenerationConfig.from_pretrained(model_path)
        except OSError:  # no generation_config.json: the model config's fields
            generation = text
        start = int(generation.decoder_start_token_id or text.decoder_start_token_id)
        forced = getattr(generation, "forced_bos_token_id", None)
        prompt = (start,) if forced is None else (start, int(forced))
        prefix = "model." if text is config else "model.language_model."
        model = cls(text, dtype=dtype, device=device, decoder_prompt=prompt, prefix=prefix)
        bias: list[torch.Tensor] = []  # [1, vocab], caught as the weights stream past
        model.load_weights(_catching(iterate_weights(model_path), "final_logits_bias", bias))
        # NOTE: HF too starts from zeros when a checkpoint has no final_logits_bias
        model.final_logits_bias = (bias[0] if bias else model.final_logits_bias).to(device, dtype)
        return model.eval()

    # --- the encoder, run by the engine when a request arrives ----------------------------
    @torch.inference_mode()
    def encode_prompt(
        self, prompt: list[int], mm_spans: Sequence[Any] = ()
    ) -> tuple[list[int], torch.Tensor]:
        """The prompt through the encoder -> (the decoder prompt, encoder states [S, width]).
        Media spans' embeddings replace their positions' token embeddings (Florence-2's
        image, as HF's masked_scatter: the scaled token embeddings elsewhere)."""
        ids = torch.tensor(prompt, dtype=torch.long, device=self.device)
        embeds = self.model.shared(ids) * self.model.encoder.embed_scale  # [S, width]
        for span in mm_spans:
            positions, rows = span.embed_rows(0, len(prompt))
            embeds[positions] = span.embeddings[rows].to(embeds.device, embeds.dtype)
        positions = torch.arange(len(prompt), device=self.device)
        states = self.model.encoder(ids, positions, inputs_embeds=embeds)
        return list(self.decoder_prompt), states

    # --- BaseCausalLM ---------------------------------------------------------------------
    def get_input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.shared(input_ids)  # [T, width] unscaled, as HF's shared module

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is not None:
            raise ValueError("BART's decoder takes token ids, not embeddings")
        return self.model.decoder(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.model.shared.weight if self.lm_head is None else self.lm_head.weight
        return (F.linear(hidden_states, weight) + self.final_logits_bias).float()  # [N, vocab]

    def kv_cache_spec(self) -> KVCacheSpec:
        heads, layers = int(self.config.decoder_attention_heads), int(self.config.decoder_layers)
        head_dim = int(self.config.d_model) // heads
        return KVCacheSpec(layers, heads, head_dim, self.dtype, (None,) * layers)

    def cross_attention_spec(self) -> CrossAttentionSpec:
        heads = int(self.config.decoder_attention_heads)
        return CrossAttentionSpec(
            num_layers=int(self.config.decoder_layers),
            num_kv_heads=heads,
            head_dim=int(self.config.d_model) // heads,
            dtype=self.dtype,
            encoder_hidden_size=int(self.config.d_model),
            max_encoder_len=int(self.config.max_position_embeddings),
        )

    # --- weights --------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_named_weights(self, weights, self._target, self.device, "BART")

    def _target(self, name: str) -> str | None:
        if name == "final_logits_bias":
            return None  # a buffer (see from_checkpoint)
        if name.startswith(self.prefix):
            name = "model." + name.removeprefix(self.prefix)
        elif name.startswith("model."):
            return None  # Florence-2's vision tower and projector: the encoder service's
        if name.endswith(("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")):
            return "model.shared.weight"  # older checkpoints store the tied copies
        if name == "lm_head.weight" and self.tied:
            return None
        return name


def _catching(
    weights: Iterable[tuple[str, torch.Tensor]], name: str, caught: list[torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights, one at a time (a checkpoint is never held whole), with the tensor called
    `name` also appended to `caught`."""
    for weight_name, tensor in weights:
        if weight_name == name:
            caught.append(tensor)
        yield weight_name, tensor
