"""The Transformers fallback: run HF's own model code with our paged attention.

Any decoder whose attention goes through transformers' `AttentionInterface` runs here,
`trust_remote_code` models included: we register `meshserve_paged` as an attention
implementation, build the HF model with it, and run the flattened step as ONE sequence of T
tokens (`position_ids` [1, T], or [3, 1, T] for M-RoPE) with `use_cache=False`. Each attention
call writes its layer's new K/V into the paged cache and attends over it, so requests never see
each other. The n-th attention call of a forward reads and writes KV cache n, whatever HF
numbers the layer (hybrids number attention layers among Mamba layers; Zamba2 shares one
attention module between depths). Mamba mixers run per request on the engine's state cache
(`lm_service.models.mamba`). For multimodal checkpoints only the language model is built and
only its weights are read.

Whether a model can run here is decided by what its code does, not by HF's
`_supports_attention_backend` flag alone (StableLM, Jamba and Zamba2 leave it False yet call
`ALL_ATTENTION_FUNCTIONS`): its modeling module must route attention through the interface (or
the model must be a pure state-space model), and a probe forward must then see every attention
layer call it.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kernels import flash
from kernels.attention import AttentionBackend, select_backend, write_kv_cache
from kernels.forward_context import get_forward_context
from kernels.torch_attention import paged_attention
from lm_service.models.base import BaseCausalLM, KVCacheSpec, StateCacheSpec
from lm_service.models.language_model import LanguageModelNames, language_model_names
from lm_service.models.loader import is_multimodal, language_model_weights, text_config_of
from lm_service.models.mamba import install_state_mixers
from protos.errors import InvalidRequest, Unsupported

ATTENTION_NAME = "meshserve_paged"
MROPE_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text"})
BACKEND_ATTR = "meshserve_attention_backend"


@dataclass(frozen=True, slots=True)
class AttentionLayerInfo:
    """What one attention layer showed when probed: its KV shape and window.

    `layer_idx` is the call's rank in the forward (the KV cache it uses), not HF's number.
    """

    layer_idx: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int | None


# Layer indices seen during the current forward (None outside TransformersForCausalLM.forward),
# and the per-layer info collected while probing (None unless probing).
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
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function over the paged KV cache.

    Args:
        query: [1, H, T, D]; key, value: [1, Hkv, T, D] (rotary already applied by HF).

    Returns:
        ([1, T, H, D], None).
    """
    layer_idx = _layer_index(module)
    probe = _PROBE.get()
    if probe is not None:
        probe.append(AttentionLayerInfo(layer_idx, key.shape[1], key.shape[3], sliding_window))
        return query.transpose(1, 2), None
    _CALLS.get().append(layer_idx)
    ctx = get_forward_context()
    k_cache, v_cache = ctx.kv_caches[layer_idx]
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1).to(k_cache.dtype)  # [T, Hkv, D]
    v = value[0].transpose(0, 1).to(v_cache.dtype)  # [T, Hkv, D]
    write_kv_cache(k, v, k_cache, v_cache, ctx.attn_metadata.slot_mapping)
    out = _attention_function(module, q, k_cache, softcap)(
        q,
        k_cache,
        v_cache,
        ctx.attn_metadata,
        scale=query.shape[-1] ** -0.5 if scaling is None else scaling,
        sliding_window=sliding_window,
        logits_soft_cap=softcap or None,
    )  # [T, H, D]
    return out.unsqueeze(0), None


def _attention_function(
    module: nn.Module, query: torch.Tensor, k_cache: torch.Tensor, softcap: float | None
) -> Callable[..., torch.Tensor]:
    """flash-attn's paged kernel where it can run this layer, else the torch reference;
    chosen on the first call and kept on the module."""
    backend = getattr(module, BACKEND_ATTR, None)
    if backend is None:
        backend = select_backend(query, k_cache, softcap)
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
def _collecting(var: ContextVar[Any], value: Any) -> Iterator[Any]:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


class _DecoderWithHead(nn.Module):
    """A base decoder (no CausalLM class exists for its config) plus a plain LM head."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Linear) -> None:
        super().__init__()
        self.model = decoder
        self.lm_head = lm_head

    def get_decoder(self) -> nn.Module:
        return self.model

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head


class TransformersForCausalLM(BaseCausalLM):
    """An HF causal LM run with `meshserve_paged` attention on the flattened batch.

    Args:
        hf_model: the loaded HF model (a `*ForCausalLM`, or `_DecoderWithHead`).
        text_config: its config.
        dtype: the model's dtype (and the KV cache's).
    """

    impl_name = "transformers"

    def __init__(self, hf_model: nn.Module, text_config: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.hf_model = hf_model.eval().requires_grad_(False)
        self.text_config = text_config
        self.dtype = dtype
        self.uses_mrope = text_config.model_type in MROPE_MODEL_TYPES
        self.suppressed_ids = _suppressed_token_ids(text_config)
        self.state_spec = install_state_mixers(self.hf_model, dtype)
        self.attention_layers = self._probe()

    @property
    def decoder(self) -> nn.Module:
        """The HF base model: ids or embeddings in, final hidden states out."""
        return _decoder_of(self.hf_model)

    def _probe(self) -> tuple[AttentionLayerInfo, ...]:
        """Runs one token through the model to learn its attention layers (and to check that
        attention really goes through the interface)."""
        device = self.decoder.get_input_embeddings().weight.device
        ids = torch.zeros(1, dtype=torch.long, device=device)
        positions = torch.zeros(
            (3, 1) if self.uses_mrope else (1,), dtype=torch.long, device=device
        )
        with _collecting(_PROBE, []) as found, torch.inference_mode():
            self._run_decoder(ids, positions, None)
        if not found and self.state_spec is None:
            raise Unsupported(
                f"{type(self.hf_model).__name__} does not call transformers' AttentionInterface; "
                "the Transformers fallback cannot run it"
            )
        return tuple(found)

    # --- BaseCausalLM ---------------------------------------------------------------------
    def get_input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(input_ids)  # [T, hidden]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with _collecting(_CALLS, []) as calls:
            hidden = self._run_decoder(input_ids, positions, inputs_embeds)
        if len(calls) != len(self.attention_layers):
            raise Unsupported(
                f"{type(self.hf_model).__name__} ran {len(calls)} attention calls through the "
                f"interface for {len(self.attention_layers)} layers"
            )
        return hidden

    def _run_decoder(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        if inputs_embeds is not None:
            inputs = {"inputs_embeds": inputs_embeds[None].to(self.dtype)}  # [1, T, hidden]
        else:
            inputs = {"input_ids": input_ids[None]}  # [1, T]
        # [1, T], or [3, 1, T] for M-RoPE
        position_ids = positions[:, None, :] if positions.dim() == 2 else positions[None]
        out = self.decoder(**inputs, position_ids=position_ids, use_cache=False)
        return out[0][0]  # [T, hidden]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.hf_model.get_output_embeddings()(hidden_states)  # [N, vocab]
        if self.suppressed_ids:
            logits[:, list(self.suppressed_ids)] = torch.finfo(logits.dtype).min
        return _postprocess_logits(logits, self.text_config).float()

    def kv_cache_spec(self) -> KVCacheSpec:
        if not self.attention_layers:  # a pure state-space model (Mamba)
            return KVCacheSpec(0, 0, 0, self.dtype, ())
        first = self.attention_layers[0]
        if any(
            (i.num_kv_heads, i.head_dim) != (first.num_kv_heads, first.head_dim)
            for i in self.attention_layers
        ):
            raise Unsupported("layers with different KV head shapes are not supported")
        return KVCacheSpec(
            num_layers=len(self.attention_layers),
            num_kv_heads=first.num_kv_heads,
            head_dim=first.head_dim,
            dtype=self.dtype,
            sliding_windows=tuple(info.sliding_window for info in self.attention_layers),
        )

    def state_cache_spec(self) -> StateCacheSpec | None:
        return self.state_spec

    # --- building -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        model_path: Path,
        hf_config: Any,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> TransformersForCausalLM:
        """Builds the language model of the checkpoint at `model_path` with our attention."""
        register_attention()
        if getattr(hf_config, "is_encoder_decoder", False):
            raise Unsupported(
                f"{_architecture(hf_config)} is an encoder-decoder model; the Transformers "
                "fallback runs decoder-only language models"
            )
        text_config = _text_config_for_build(hf_config)
        model_class, has_head = _hf_model_class(text_config, model_path, trust_remote_code)
        _check_backend_compatible(model_class, hf_config)
        options = {"dtype": dtype, "attn_implementation": ATTENTION_NAME}
        if not is_multimodal(hf_config):
            hf_model = model_class.from_pretrained(
                str(model_path),
                config=text_config,
                trust_remote_code=trust_remote_code,
                revision=revision,
                **options,
            )
        else:
            hf_model = _from_language_model_weights(
                model_class, has_head, hf_config, model_path, options
            )
        return cls(hf_model.to(device), text_config, dtype)


def _architecture(config: Any) -> str:
    return (getattr(config, "architectures", None) or [type(config).__name__])[0]


def _text_config_for_build(hf_config: Any) -> Any:
    """A copy of the text config; multimodal configs keep `tie_word_embeddings` outside."""
    text_config = copy.deepcopy(text_config_of(hf_config))
    if text_config is not hf_config and hasattr(hf_config, "tie_word_embeddings"):
        text_config.tie_word_embeddings = bool(hf_config.tie_word_embeddings)
    return text_config


def _hf_model_class(
    text_config: Any, model_path: Path, trust_remote_code: bool
) -> tuple[type, bool]:
    """(class, has_lm_head): the config's CausalLM class, else its base decoder class."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto_map = getattr(text_config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(
            auto_map["AutoModelForCausalLM"], str(model_path)
        ), True
    config_class = type(text_config)
    if config_class in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM._model_mapping[config_class], True
    own = _own_class(text_config)
    if own is not None:
        return own, True
    if config_class in AutoModel._model_mapping:
        return AutoModel._model_mapping[config_class], False
    raise Unsupported(
        f"transformers has no causal LM class for model_type {text_config.model_type!r}"
    )


def _own_class(text_config: Any) -> type | None:
    """The checkpoint's own class when its config is its text config and it has an LM head
    (Chameleon: the decoder's layers sit next to its VQ model in one class).
    NOTE: its media modules load too; they are never run here."""
    import transformers

    cls = getattr(transformers, _architecture(text_config), None)
    if cls is None or getattr(cls, "config_class", None) is not type(text_config):
        return None
    return cls if hasattr(cls, "get_output_embeddings") else None


def _check_backend_compatible(model_class: type, hf_config: Any) -> None:
    """Refuses a model whose code cannot reach our attention (the probe checks the rest)."""
    if getattr(model_class, "_supports_attention_backend", False):
        return
    if _routes_attention_through_interface(model_class) or getattr(model_class, "_is_stateful", 0):
        return
    raise Unsupported(
        f"{_architecture(hf_config)} ({model_class.__name__}) computes attention in its own "
        "code instead of transformers' attention interface (ALL_ATTENTION_FUNCTIONS), so the "
        "Transformers fallback cannot put it on the paged KV cache"
    )


def _routes_attention_through_interface(model_class: type) -> bool:
    """Whether the modeling code of the class (or of a base it extends) looks up attention
    in ALL_ATTENTION_FUNCTIONS, as HF's interface-ready models do."""
    for cls in model_class.__mro__:
        module = sys.modules.get(cls.__module__)
        if module is None or not cls.__module__.startswith(
            ("transformers.models", "transformers_modules")
        ):
            continue
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        if "ALL_ATTENTION_FUNCTIONS" in source:
            return True
    return False


def _from_language_model_weights(
    model_class: type, has_head: bool, hf_config: Any, model_path: Path, options: dict
) -> nn.Module:
    """Loads only the LM weights of a multimodal checkpoint into `model_class`.

    Raises:
        InvalidRequest: a weight of the language model is not in the checkpoint.
    """
    names = language_model_names(hf_config)
    state = dict(language_model_weights(model_path, names))
    text_config = _text_config_for_build(hf_config)
    load = dict(config=text_config, output_loading_info=True, **options)
    if has_head:
        model, info = model_class.from_pretrained(None, state_dict=state, **load)
        _refuse_missing(info["missing_keys"], names, model_path)
        return model
    head_weight = state.pop("lm_head.weight", None)
    decoder_state = {k.removeprefix("model."): v for k, v in state.items()}
    decoder, info = model_class.from_pretrained(None, state_dict=decoder_state, **load)
    missing = [f"model.{k}" for k in info["missing_keys"]]
    tied = bool(text_config.tie_word_embeddings)
    _refuse_missing(
        missing + (["lm_head.weight"] if head_weight is None and not tied else []),
        names,
        model_path,
    )
    embed = decoder.get_input_embeddings().weight
    lm_head = nn.Linear(embed.shape[1], embed.shape[0], bias=False, dtype=embed.dtype)
    if tied:
        lm_head.weight = embed
    else:
        lm_head.weight.data.copy_(head_weight)
    return _DecoderWithHead(decoder, lm_head)


def _refuse_missing(missing: list[str], names: LanguageModelNames, model_path: Path) -> None:
    """A language model that would run on random weights is refused at start-up."""
    if not missing:
        return
    prefixes = names.missing_prefixes(missing)
    shown = ", ".join(prefixes[:6]) + (
        f" and {len(prefixes) - 6} more" if len(prefixes) > 6 else ""
    )
    raise InvalidRequest(
        f"{model_path} lacks {len(missing)} language-model weight(s) of {names.architecture} "
        f"under {shown}; refusing to run them on random weights"
    )


def _decoder_of(hf_model: nn.Module) -> nn.Module:
    """The base model that turns ids into final hidden states (`model`, `transformer`, ...)."""
    if isinstance(hf_model, _DecoderWithHead):
        return hf_model.model
    base = getattr(hf_model, "base_model", None)
    if base is None or base is hf_model:
        raise Unsupported(f"{type(hf_model).__name__} exposes no base decoder model")
    return base


def _suppressed_token_ids(text_config: Any) -> tuple[int, ...]:
    """Ids a model's own forward never lets it emit.

    NOTE: model-specific by necessity: HF's ChameleonForConditionalGeneration.forward sets the
    logits of its image (VQ code) tokens, the vocabulary entries named "IMGIMG...", to the
    dtype's minimum; no config field says so.
    """
    if text_config.model_type != "chameleon":
        return ()
    vocabulary = getattr(text_config, "vocabulary_map", None) or {}
    return tuple(sorted(i for name, i in vocabulary.items() if name.startswith("IMGIMG")))


def _postprocess_logits(logits: torch.Tensor, text_config: Any) -> torch.Tensor:
    """What HF's CausalLM heads do to logits after the LM head (Gemma2, Cohere, Granite)."""
    cap = getattr(text_config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(text_config, "logit_scale", None)
    if scale:
        logits = logits * scale
    divisor = getattr(text_config, "logits_scaling", None)
    if divisor:
        logits = logits / divisor
    return logits
