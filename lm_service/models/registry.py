"""`config.architectures[0]` -> the implementation that runs it, and `load_model`.

`model_impl`: "auto" (native if we have one for the architecture and its language model,
else the Transformers fallback), "native" (an error naming the architecture when we have
none), "transformers" (always the fallback). Model modules are imported lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lm_service.models.base import BaseCausalLM
from lm_service.models.loader import (
    load_config,
    model_weights,
    resolve_model_path,
    text_config_of,
)
from protos.dtypes import config_dtype, resolve_dtype
from protos.errors import InvalidRequest, Unsupported

MODEL_IMPLS = ("auto", "native", "transformers")

# architecture -> (module under lm_service.models, class). Multimodal architectures run their
# language model here; their towers live in encoder_service.
_NATIVE_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM"),
    "InternLMForCausalLM": ("llama", "LlamaForCausalLM"),
    "AquilaForCausalLM": ("llama", "LlamaForCausalLM"),
    "AquilaModel": ("llama", "LlamaForCausalLM"),
    "LlavaForConditionalGeneration": ("llama", "LlamaForCausalLM"),
    "Qwen2AudioForConditionalGeneration": ("llama", "LlamaForCausalLM"),
    "Qwen2VLForConditionalGeneration": ("llama", "LlamaForCausalLM"),
    "Qwen2_5_VLForConditionalGeneration": ("llama", "LlamaForCausalLM"),
}
# Encoder-decoder architectures: their decoder runs here with cross-attention over encoder
# states that each request brings; native only (the Transformers fallback refuses them).
_ENCODER_DECODER_MODELS: dict[str, tuple[str, str]] = {
    "WhisperForConditionalGeneration": ("whisper", "WhisperForConditionalGeneration"),
    "BartForConditionalGeneration": ("bart", "BartForConditionalGeneration"),
    "Florence2ForConditionalGeneration": ("bart", "BartForConditionalGeneration"),
    "MllamaForConditionalGeneration": ("mllama", "MllamaForConditionalGeneration"),
}
ENCODER_DECODER_ARCHITECTURES: frozenset[str] = frozenset(_ENCODER_DECODER_MODELS)
NATIVE_ARCHITECTURES: frozenset[str] = frozenset(_NATIVE_MODELS) | ENCODER_DECODER_ARCHITECTURES
TRANSFORMERS_BACKEND = ("transformers_backend", "TransformersForCausalLM")


class LoadedModel(NamedTuple):
    """A model ready to run, and what it was built from."""

    model: BaseCausalLM
    hf_config: Any
    text_config: Any
    architecture: str
    impl_name: str
    model_path: Path


def _import(entry: tuple[str, str]) -> type:
    module = importlib.import_module(f"lm_service.models.{entry[0]}")
    return getattr(module, entry[1])


def architecture_of(config: Any) -> str:
    architectures = getattr(config, "architectures", None)
    if not architectures:
        raise InvalidRequest(
            "config.json names no architectures; set one with "
            "hf_overrides={'architectures': ['...ForCausalLM']}"
        )
    return architectures[0]


def _native_supports(architecture: str, text_config: Any) -> bool:
    if architecture not in _NATIVE_MODELS:
        return False
    from lm_service.models.llama import is_llama_family

    return is_llama_family(text_config)


def choose_impl(architecture: str, text_config: Any, model_impl: str) -> str:
    """'native' or 'transformers' for this architecture under `model_impl`."""
    if model_impl not in MODEL_IMPLS:
        raise InvalidRequest(f"model_impl must be one of {MODEL_IMPLS}, got {model_impl!r}")
    if model_impl == "transformers":
        return "transformers"
    if _native_supports(architecture, text_config):
        return "native"
    if model_impl == "native":
        lm = getattr(text_config, "model_type", "?")
        raise Unsupported(
            f"no native implementation of {architecture} (language model {lm!r}); native "
            f"architectures: {', '.join(sorted(NATIVE_ARCHITECTURES))}. "
            "Use model_impl='transformers' or 'auto'"
        )
    return "transformers"


def load_model(
    model: str,
    *,
    model_impl: str = "auto",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    hf_overrides: Mapping[str, Any] | Callable[[Any], Any] | None = None,
    revision: str | None = None,
) -> LoadedModel:
    """Resolves, configures and loads `model` (HF id or local folder) for the paged engine."""
    model_path = resolve_model_path(model, revision=revision)
    hf_config = load_config(
        model_path,
        trust_remote_code=trust_remote_code,
        hf_overrides=hf_overrides or None,
        revision=revision,
    )
    text_config = text_config_of(hf_config)
    architecture = architecture_of(hf_config)
    torch_dtype = resolve_dtype(dtype, config_dtype(text_config, hf_config))
    if architecture in _ENCODER_DECODER_MODELS and model_impl in ("auto", "native"):
        model_class = _import(_ENCODER_DECODER_MODELS[architecture])
        lm = model_class.from_checkpoint(model_path, hf_config, dtype=torch_dtype, device=device)
        return LoadedModel(lm, hf_config, text_config, architecture, "native", model_path)
    impl = choose_impl(architecture, text_config, model_impl)
    if impl == "native":
        lm = _load_native(architecture, model_path, hf_config, text_config, torch_dtype, device)
    else:
        backend = _import(TRANSFORMERS_BACKEND)
        lm = backend.from_checkpoint(
            model_path,
            hf_config,
            dtype=torch_dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            revision=revision,
        )
    return LoadedModel(lm, hf_config, text_config, architecture, impl, model_path)


def _load_native(
    architecture: str,
    model_path: Path,
    hf_config: Any,
    text_config: Any,
    dtype: torch.dtype,
    device: str | torch.device,
) -> BaseCausalLM:
    model_class = _import(_NATIVE_MODELS[architecture])
    tie = getattr(hf_config, "tie_word_embeddings", None)
    lm = model_class(text_config, dtype=dtype, device=device, tie_word_embeddings=tie)
    lm.load_weights(model_weights(model_path, hf_config))
    return lm.eval()
