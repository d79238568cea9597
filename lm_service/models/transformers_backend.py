"""The Transformers fallback: run HF's own model code with our paged attention.

Any decoder whose attention goes through transformers' `AttentionInterface` runs here,
`trust_remote_code` models included: we register `meshserve_paged` as an attention
implementation (`lm_service.models.hf_attention`), build the HF model with it, and run the
flattened step as ONE sequence of T tokens (`position_ids` [1, T], or [3, 1, T] for M-RoPE)
with `use_cache=False`. Each attention call writes its layer's new K/V into the paged cache and
attends over it, so requests never see each other. The n-th attention call of a forward reads
and writes KV cache n, whatever HF numbers the layer (hybrids number attention layers among
Mamba layers; Zamba2 shares one attention module between depths). Mamba mixers run per request
on the engine's state cache (`lm_service.models.mamba`); MLA layers cache their compressed
latent (`lm_service.models.mla`); Bloom, MPT and Falcon, whose attention is their own code, run
through shims of their attention modules (`lm_service.models.attention_shims`). For
multimodal checkpoints only the language model is built and only its weights are read.

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lm_service.models.attention_shims import (
    BUILD_ATTN_IMPLEMENTATION,
    install_attention_shims,
    needs_attention_shims,
)
from lm_service.models.base import BaseCausalLM, KVCacheSpec, StateCacheSpec
from lm_service.models.hf_attention import (
    ATTENTION_NAME,
    AttentionLayerInfo,
    counting_calls,
    probing,
    register_attention,
)
from lm_service.models.language_model import LanguageModelNames, language_model_names
from lm_service.models.loader import is_multimodal, language_model_weights, text_config_of
from lm_service.models.mamba import install_state_mixers
from lm_service.models.mla import install_latent_attention
from protos.errors import InvalidRequest, Unsupported

MROPE_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text"})


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
        install_latent_attention(self.hf_model)
        if needs_attention_shims(text_config):
            install_attention_shims(self.hf_model, text_config)
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
        with probing() as found, torch.inference_mode():
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
        with counting_calls() as calls:
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

        def geometry(i: AttentionLayerInfo) -> tuple[int, int, int | None, bool]:
            return (i.num_kv_heads, i.head_dim, i.v_head_dim, i.values_in_keys)

        if any(geometry(i) != geometry(first) for i in self.attention_layers):
            raise Unsupported("layers with different KV head shapes are not supported")
        return KVCacheSpec(
            num_layers=len(self.attention_layers),
            num_kv_heads=first.num_kv_heads,
            head_dim=first.head_dim,
            dtype=self.dtype,
            sliding_windows=tuple(info.sliding_window for info in self.attention_layers),
            v_head_dim=first.v_head_dim,
            values_in_keys=first.values_in_keys,
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
        shimmed = needs_attention_shims(text_config)
        attn = BUILD_ATTN_IMPLEMENTATION if shimmed else ATTENTION_NAME
        options = {"dtype": dtype, "attn_implementation": attn}
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
    if needs_attention_shims(text_config_of(hf_config)):  # Bloom, MPT, Falcon: our shims
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
