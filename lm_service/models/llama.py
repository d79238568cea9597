"""Native Llama family: Llama, Mistral, Qwen2 and the language models of LLaVA, Qwen2-Audio,
Qwen2-VL and Qwen2.5-VL (M-RoPE), over the paged KV cache.

Follows HF's modeling_llama / modeling_mistral / modeling_qwen2 / modeling_qwen2_vl: pre-norm
decoder layers, RMSNorm, rotary attention with grouped KV heads, SwiGLU MLP. q/k/v and
gate/up are fused into one matmul each; the checkpoint's separate weights are stacked into
them at load time. The model is built on the meta device and materialized by `load_weights`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernels.activation import silu_and_mul
from kernels.attention import PagedAttention
from kernels.norms import fused_add_rms_norm, rms_norm
from kernels.packed_linear import PackedHead, PackedLinear, pack_linears
from kernels.rotary import RotaryEmbedding
from lm_service.models.base import BaseCausalLM, KVCacheSpec, sliding_windows_of
from protos.errors import InvalidRequest

QWEN2_MODEL_TYPES = frozenset(
    {"qwen2", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text", "qwen2_audio"}
)
# HF's Qwen2-VL / Qwen2.5-VL text attention ignores `config.head_dim`.
HIDDEN_SPLIT_HEAD_DIM_TYPES = frozenset(
    {"qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text"}
)
MROPE_MODEL_TYPES = HIDDEN_SPLIT_HEAD_DIM_TYPES
LLAMA_FAMILY_MODEL_TYPES = frozenset({"llama", "mistral", "internlm", "aquila"} | QWEN2_MODEL_TYPES)
# Checkpoint entries that are derived state, not weights.
SKIPPED_WEIGHT_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


@dataclass(frozen=True, slots=True)
class LlamaArgs:
    """The shape of one Llama-family model, read from its HF text config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    sliding_windows: tuple[int | None, ...]
    uses_mrope: bool

    @classmethod
    def from_config(cls, config: Any, *, tie_word_embeddings: bool | None = None) -> LlamaArgs:
        model_type = config.model_type
        num_heads = int(config.num_attention_heads)
        qkv_bias, o_bias = _attention_biases(config)
        tie = getattr(config, "tie_word_embeddings", False)
        return cls(
            vocab_size=int(config.vocab_size),
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=num_heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
            head_dim=_head_dim(config),
            rms_norm_eps=float(config.rms_norm_eps),
            hidden_act=getattr(config, "hidden_act", "silu"),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            tie_word_embeddings=bool(tie if tie_word_embeddings is None else tie_word_embeddings),
            sliding_windows=sliding_windows_of(config),
            uses_mrope=model_type in MROPE_MODEL_TYPES
            or "mrope_section" in (getattr(config, "rope_parameters", None) or {}),
        )


def _head_dim(config: Any) -> int:
    split = int(config.hidden_size) // int(config.num_attention_heads)
    if config.model_type in HIDDEN_SPLIT_HEAD_DIM_TYPES:
        return split
    return int(getattr(config, "head_dim", None) or split)


def _attention_biases(config: Any) -> tuple[bool, bool]:
    """(q/k/v bias, o bias) as each HF family builds them."""
    if config.model_type in QWEN2_MODEL_TYPES:
        return True, False
    if config.model_type == "mistral":
        return False, False
    bias = bool(getattr(config, "attention_bias", False) or getattr(config, "bias", False))
    return bias, bias


def is_llama_family(text_config: Any) -> bool:
    return getattr(text_config, "model_type", None) in LLAMA_FAMILY_MODEL_TYPES


# ----------------------------------------------------------------------------- layers


class MergedLinear(PackedLinear):
    """A Linear whose output rows stack several checkpoint Linears (q/k/v, gate/up)."""

    def __init__(
        self, in_features: int, shard_sizes: tuple[int, ...], *, bias: bool, dtype: torch.dtype
    ) -> None:
        super().__init__(in_features, sum(shard_sizes), bias=bias, device="meta", dtype=dtype)
        self.shard_sizes = shard_sizes

    def shard_rows(self, shard_id: int) -> slice:
        start = sum(self.shard_sizes[:shard_id])
        return slice(start, start + self.shard_sizes[shard_id])


class RMSNorm(nn.Module):
    """RMSNorm with the residual add fused in: `(norm(x + residual), x + residual)`."""

    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, device="meta", dtype=dtype))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return rms_norm(x, self.weight, self.eps), x
        return fused_add_rms_norm(x, residual, self.weight, self.eps)


class LlamaAttention(nn.Module):
    def __init__(
        self, args: LlamaArgs, layer_idx: int, rotary_emb: nn.Module, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            args.num_heads,
            args.num_kv_heads,
            args.head_dim,
        )
        q_size, kv_size = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        self.qkv_proj = MergedLinear(
            args.hidden_size, (q_size, kv_size, kv_size), bias=args.qkv_bias, dtype=dtype
        )
        self.o_proj = PackedLinear(
            q_size, args.hidden_size, bias=args.o_bias, device="meta", dtype=dtype
        )
        self.rotary_emb = rotary_emb
        self.attn = PagedAttention(
            args.num_heads,
            args.num_kv_heads,
            args.head_dim,
            scale=args.head_dim**-0.5,
            layer_idx=layer_idx,
            sliding_window=args.sliding_windows[layer_idx],
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.shard_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q, k, v)  # [T, H, D]
        return self.o_proj(out.reshape(num_tokens, -1))


class LlamaMLP(nn.Module):
    def __init__(self, args: LlamaArgs, dtype: torch.dtype) -> None:
        super().__init__()
        size = args.intermediate_size
        self.gate_up_proj = MergedLinear(
            args.hidden_size, (size, size), bias=args.mlp_bias, dtype=dtype
        )
        self.down_proj = PackedLinear(
            size, args.hidden_size, bias=args.mlp_bias, device="meta", dtype=dtype
        )
        self.hidden_act = args.hidden_act

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(hidden)  # [T, 2 * intermediate]
        if self.hidden_act == "silu":
            return self.down_proj(silu_and_mul(gate_up))
        from transformers.activations import ACT2FN

        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(ACT2FN[self.hidden_act](gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, args: LlamaArgs, layer_idx: int, rotary_emb: nn.Module, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(args, layer_idx, rotary_emb, dtype)
        self.mlp = LlamaMLP(args, dtype)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, args: LlamaArgs, rotary_emb: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(
            args.vocab_size, args.hidden_size, device="meta", dtype=dtype
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(args, i, rotary_emb, dtype) for i in range(args.num_layers)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden  # [T, hidden]


# ----------------------------------------------------------------------------- causal LM


# checkpoint name part -> (our fused module, shard index)
STACKED_PARAMS: tuple[tuple[str, str, int], ...] = (
    (".q_proj.", ".qkv_proj.", 0),
    (".k_proj.", ".qkv_proj.", 1),
    (".v_proj.", ".qkv_proj.", 2),
    (".gate_proj.", ".gate_up_proj.", 0),
    (".up_proj.", ".gate_up_proj.", 1),
)


class LlamaForCausalLM(BaseCausalLM):
    """Llama-family decoder on the paged KV cache.

    Args:
        text_config: the HF config of the language model (`config.get_text_config()`).
        dtype: parameter and KV cache dtype.
        device: where `load_weights` materializes the parameters.
        tie_word_embeddings: overrides the text config's flag (multimodal configs keep it on
            the outer config).
    """

    impl_name = "native"

    def __init__(
        self,
        text_config: Any,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        tie_word_embeddings: bool | None = None,
    ) -> None:
        super().__init__()
        if not is_llama_family(text_config):
            raise InvalidRequest(
                f"model_type {text_config.model_type!r} is not a Llama-family language model"
            )
        self.args = LlamaArgs.from_config(text_config, tie_word_embeddings=tie_word_embeddings)
        self.dtype, self.device = dtype, torch.device(device)
        self.uses_mrope = self.args.uses_mrope
        rotary_emb = RotaryEmbedding.from_config(text_config, device=self.device)
        self.model = LlamaModel(self.args, rotary_emb, dtype)
        self.lm_head = None
        self.head: PackedHead | None = None  # set by load_weights
        if not self.args.tie_word_embeddings:
            self.lm_head = PackedLinear(
                self.args.hidden_size, self.args.vocab_size, bias=False, device="meta", dtype=dtype
            )

    # --- BaseCausalLM ---------------------------------------------------------------------
    def get_input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)  # [T, hidden]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = (
            inputs_embeds if inputs_embeds is not None else self.get_input_embeddings(input_ids)
        )
        return self.model(hidden.to(self.dtype), positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        head = self.head if self.lm_head is None else self.lm_head
        return head(hidden_states).float()  # [N, vocab]

    def kv_cache_spec(self) -> KVCacheSpec:
        return KVCacheSpec(
            num_layers=self.args.num_layers,
            num_kv_heads=self.args.num_kv_heads,
            head_dim=self.args.head_dim,
            dtype=self.dtype,
            sliding_windows=self.args.sliding_windows,
        )

    # --- weights --------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Materializes the parameters on `device` and fills them from HF-named `weights`.

        Returns:
            the HF names that were loaded.

        Raises:
            InvalidRequest: a weight the model does not have, or a parameter left unfilled.
        """
        _materialize(self, self.device)
        params = dict(self.named_parameters())
        expected = _expected_pieces(self)
        loaded: set[tuple[str, int | None]] = set()
        names: set[str] = set()
        for name, tensor in weights:
            if self._skips(name):
                continue
            loaded.add(self._load_one(params, name, tensor))
            names.add(name)
        missing = sorted(f"{p}[{s}]" if s is not None else p for p, s in expected - loaded)
        if missing:
            raise InvalidRequest(f"checkpoint lacks weights for: {', '.join(missing[:8])}")
        pack_linears(self)
        if self.lm_head is None:
            self.head = PackedHead(self.model.embed_tokens.weight)
        return names

    def _skips(self, name: str) -> bool:
        """Derived buffers, a tied head, and layers cut off by `num_hidden_layers`."""
        if name.endswith(SKIPPED_WEIGHT_SUFFIXES):
            return True
        if self.lm_head is None and name.startswith("lm_head."):
            return True
        parts = name.split(".")
        return (
            parts[:2] == ["model", "layers"]
            and parts[2].isdigit()
            and int(parts[2]) >= self.args.num_layers
        )

    def _load_one(
        self, params: dict[str, nn.Parameter], name: str, tensor: torch.Tensor
    ) -> tuple[str, int | None]:
        for part, fused, shard_id in STACKED_PARAMS:
            if part in name:
                target = name.replace(part, fused)
                module = self.get_submodule(target.rsplit(".", 1)[0])
                _copy(params, target, tensor, rows=module.shard_rows(shard_id), source=name)
                return target, shard_id
        _copy(params, name, tensor, rows=None, source=name)
        return name, None


def _materialize(module: nn.Module, device: torch.device) -> None:
    """Replaces every meta parameter with an uninitialized one on `device`."""
    for submodule in module.modules():
        for key, param in list(submodule._parameters.items()):
            if param is not None and param.is_meta:
                real = torch.empty(param.shape, dtype=param.dtype, device=device)
                submodule._parameters[key] = nn.Parameter(real, requires_grad=False)


def _expected_pieces(model: nn.Module) -> set[tuple[str, int | None]]:
    pieces: set[tuple[str, int | None]] = set()
    for module_name, module in model.named_modules():
        for key, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{key}"
            if isinstance(module, MergedLinear):
                pieces.update((name, i) for i in range(len(module.shard_sizes)))
            else:
                pieces.add((name, None))
    return pieces


def _copy(
    params: dict[str, nn.Parameter],
    target: str,
    tensor: torch.Tensor,
    *,
    rows: slice | None,
    source: str,
) -> None:
    param = params.get(target)
    if param is None:
        raise InvalidRequest(f"unexpected weight {source!r} for a Llama-family model")
    dest = param.data if rows is None else param.data[rows]
    if dest.shape != tensor.shape:
        raise InvalidRequest(
            f"weight {source!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
        )
    dest.copy_(tensor)
