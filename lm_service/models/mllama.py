"""Native Mllama (Llama 3.2 Vision) language model: Llama self-attention layers, paged, with
gated cross-attention layers at `cross_attention_layers` over the images' projected vision
states, which the image encoder service computes and each request brings (`encoder_states`).

Follows HF's modeling_mllama: a cross-attention layer is pre-norm cross-attention (q/k RMS
norms, no rotary) scaled by `tanh(cross_attn_attn_gate)`, then a SwiGLU MLP scaled by
`tanh(cross_attn_mlp_gate)` and zeroed for tokens that attend no image
(`full_text_row_masked_out_mask`); which image tiles a token attends is its request's
`cross_windows` (`protos.cross_windows`, HF's processor mask). A text-only request has no
encoder states: its cross-attention output is zero and its MLP masked, so the layer leaves it
unchanged, as HF skips the layer. The vision tower and projector weights are the encoder
service's; the token embeddings have 8 rows beyond the vocabulary, as HF's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kernels.cross_attention import CrossAttention
from kernels.forward_context import get_forward_context
from kernels.rotary import RotaryEmbedding
from lm_service.models.base import BaseCausalLM, CrossAttentionSpec, KVCacheSpec
from lm_service.models.llama import (
    STACKED_PARAMS,
    LlamaArgs,
    LlamaDecoderLayer,
    LlamaMLP,
    MergedLinear,
    RMSNorm,
    _copy,
    _expected_pieces,
    _materialize,
)
from lm_service.models.loader import iterate_weights
from protos.errors import InvalidRequest

# NOTE: HF has no image limit in the config; this sizes the cross cache (images x tiles x
# patches per request), and longer encoder states are refused by the engine.
MAX_IMAGES_PER_REQUEST = 4
EXTRA_EMBEDDING_ROWS = 8  # HF's MllamaTextModel: nn.Embedding(vocab_size + 8, hidden)
# checkpoint prefix -> ours: the hub layout (what save_pretrained writes) and HF's in-memory one
_LM_PREFIXES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
)
_TOWER_PREFIXES = (
    "vision_model.",
    "multi_modal_projector.",
    "model.vision_model.",
    "model.multi_modal_projector.",
)


def mllama_num_patches(vision_config: Any) -> int:
    """Encoder states per tile: the patches and a class token (HF's `num_patches`)."""
    return (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2 + 1


class MllamaCrossAttention(nn.Module):
    """q from the text, k/v from the image states; q and k RMS-normed per head.

    NOTE: q/k/v share one MergedLinear only so the checkpoint's q_proj/k_proj/v_proj load
    like Llama's; q reads the text and k/v the encoder states, so the rows are used apart.
    """

    def __init__(self, args: LlamaArgs, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = args.num_heads, args.num_kv_heads
        self.head_dim = args.hidden_size // args.num_heads  # HF ignores config.head_dim here
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(
            args.hidden_size, (q_size, kv_size, kv_size), bias=False, dtype=dtype
        )
        self.o_proj = nn.Linear(q_size, args.hidden_size, bias=False, device="meta", dtype=dtype)
        self.q_norm = RMSNorm(self.head_dim, args.rms_norm_eps, dtype)
        self.k_norm = RMSNorm(self.head_dim, args.rms_norm_eps, dtype)
        self.attn = CrossAttention(
            self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5, layer_idx
        )

    def _project(self, x: torch.Tensor, shard: int, heads: int) -> torch.Tensor:
        weight = self.qkv_proj.weight[self.qkv_proj.shard_rows(shard)]
        return F.linear(x, weight).view(x.shape[0], heads, self.head_dim)  # [N, heads, D]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [T, hidden] -> [T, hidden]."""
        q, _ = self.q_norm(self._project(hidden, 0, self.num_heads))  # [T, H, D]
        states = get_forward_context().cross_metadata.encoder_states  # [N, hidden] or None
        k = v = None
        if states is not None:
            states = states.to(hidden.dtype)
            k, _ = self.k_norm(self._project(states, 1, self.num_kv_heads))  # [N, Hkv, D]
            v = self._project(states, 2, self.num_kv_heads)  # [N, Hkv, D]
        out = self.attn(q, k, v)  # [T, H, D]
        return self.o_proj(out.reshape(hidden.shape[0], -1))


class MllamaCrossLayer(nn.Module):
    """HF's MllamaCrossAttentionDecoderLayer, in the residual form of LlamaDecoderLayer."""

    def __init__(self, args: LlamaArgs, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.cross_attn = MllamaCrossAttention(args, layer_idx, dtype)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(args, dtype)
        self.cross_attn_attn_gate = nn.Parameter(torch.empty(1, device="meta", dtype=dtype))
        self.cross_attn_mlp_gate = nn.Parameter(torch.empty(1, device="meta", dtype=dtype))

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, hidden = self.input_layernorm(hidden, residual)
        hidden = hidden + self.cross_attn_attn_gate.tanh() * self.cross_attn(normed)
        normed, hidden = self.post_attention_layernorm(hidden)
        no_image = get_forward_context().cross_metadata.no_image  # [T] bool
        mlp = self.mlp(normed).masked_fill(no_image[:, None], 0.0)  # [T, hidden]
        return self.cross_attn_mlp_gate.tanh() * mlp, hidden


class MllamaTextModel(nn.Module):
    def __init__(
        self, args: LlamaArgs, cross_layers: Sequence[int], rotary: nn.Module, dtype: torch.dtype
    ) -> None:
        super().__init__()
        rows = args.vocab_size + EXTRA_EMBEDDING_ROWS
        self.embed_tokens = nn.Embedding(rows, args.hidden_size, device="meta", dtype=dtype)
        layers: list[nn.Module] = []
        for index in range(args.num_layers):
            if index in cross_layers:
                layers.append(MllamaCrossLayer(args, cross_layers.index(index), dtype))
            else:
                self_index = index - sum(1 for c in cross_layers if c < index)
                layers.append(LlamaDecoderLayer(args, self_index, rotary, dtype))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden  # [T, hidden]


class MllamaForConditionalGeneration(BaseCausalLM):
    """Mllama's language model on the engine; the vision tower runs in the encoder service.

    Args:
        config: the MllamaConfig (its text and vision configs).
    """

    impl_name = "native"

    def __init__(
        self, config: Any, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> None:
        super().__init__()
        text = config.text_config
        self.args = LlamaArgs.from_config(text)
        self.cross_layers = [int(i) for i in text.cross_attention_layers]
        self.dtype, self.device = dtype, torch.device(device)
        self.image_len = int(config.vision_config.max_num_tiles) * mllama_num_patches(
            config.vision_config
        )
        rotary = RotaryEmbedding.from_config(text, device=self.device)
        self.model = MllamaTextModel(self.args, self.cross_layers, rotary, dtype)
        self.lm_head = nn.Linear(
            self.args.hidden_size, self.args.vocab_size, bias=False, device="meta", dtype=dtype
        )

    @classmethod
    def from_checkpoint(
        cls, model_path: Path, config: Any, *, dtype: torch.dtype, device: str | torch.device
    ) -> MllamaForConditionalGeneration:
        model = cls(config, dtype=dtype, device=str(device))
        model.load_weights(iterate_weights(model_path))
        return model.eval()

    # --- BaseCausalLM ---------------------------------------------------------------------
    def get_input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)  # [T, hidden]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.model.embed_tokens(input_ids)
        return self.model(hidden.to(self.dtype), positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states, self.lm_head.weight).float()  # [N, vocab]

    def kv_cache_spec(self) -> KVCacheSpec:
        num_self = self.args.num_layers - len(self.cross_layers)
        return KVCacheSpec(
            num_self, self.args.num_kv_heads, self.args.head_dim, self.dtype, (None,) * num_self
        )

    def cross_attention_spec(self) -> CrossAttentionSpec:
        return CrossAttentionSpec(
            num_layers=len(self.cross_layers),
            num_kv_heads=self.args.num_kv_heads,
            head_dim=self.args.hidden_size // self.args.num_heads,
            dtype=self.dtype,
            encoder_hidden_size=self.args.hidden_size,
            max_encoder_len=MAX_IMAGES_PER_REQUEST * self.image_len,
            requires_encoder_states=False,  # a text-only prompt runs without images
        )

    # --- weights --------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Fills the language model from HF names; the tower's weights are skipped.

        Raises:
            InvalidRequest: an unknown weight, a wrong shape, or a parameter left unfilled.
        """
        _materialize(self, self.device)
        params = dict(self.named_parameters())
        loaded: set[tuple[str, int | None]] = set()
        names: set[str] = set()
        for name, tensor in weights:
            target = self._target(name)
            if target is None:
                continue
            loaded.add(self._load_one(params, target, tensor, name))
            names.add(name)
        missing = sorted(
            f"{p}[{s}]" if s is not None else p for p, s in _expected_pieces(self) - loaded
        )
        if missing:
            raise InvalidRequest(f"checkpoint lacks weights for: {', '.join(missing[:8])}")
        return names

    @staticmethod
    def _target(name: str) -> str | None:
        if name.startswith(_TOWER_PREFIXES) or name.endswith("rotary_emb.inv_freq"):
            return None
        for prefix, ours in _LM_PREFIXES:
            if name.startswith(prefix):
                return ours + name.removeprefix(prefix)
        return name

    def _load_one(
        self, params: dict[str, nn.Parameter], target: str, tensor: torch.Tensor, source: str
    ) -> tuple[str, int | None]:
        for part, fused, shard_id in STACKED_PARAMS:
            if part in target:
                target = target.replace(part, fused)
                module = self.get_submodule(target.rsplit(".", 1)[0])
                _copy(params, target, tensor, rows=module.shard_rows(shard_id), source=source)
                return target, shard_id
        _copy(params, target, tensor, rows=None, source=source)
        return target, None
