"""A checkpoint's media modules: its HF class on the meta device, all but the language model
read from the checkpoint.

The language model is found from the model class (its `language_model` / `text_model` child),
not from a list of weight prefixes, and stays on the meta device: it is never run here, and a
feature function that touched it would fail loudly instead of using random weights. A base that
IS the decoder (Chameleon: its layers sit next to its VQ model) has no such child: its media
modules are then the children built from one of the config's media sub-configs. A class with
no feature functions at all (Phi-4-multimodal) gets an adapter (`_FEATURE_ADAPTERS`) that
defines them over HF's own media modules and names its roots (`media_roots`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoder_service.towers.phi4mm_features import Phi4MultimodalFeatures
from encoder_service.weights import build_on_meta, load_tower_weights
from protos.errors import Unsupported

_LANGUAGE_MODEL_CHILDREN = ("language_model", "text_model")
_FEATURE_METHODS = ("get_image_features", "get_video_features", "get_audio_features")
# HF classes without feature functions -> the module that gives their media modules some
_FEATURE_ADAPTERS: dict[str, type[nn.Module]] = {
    "Phi4MultimodalForCausalLM": Phi4MultimodalFeatures,
}


@dataclass(frozen=True, slots=True, eq=False)
class MediaModules:
    """Args:
    base: the module with the feature functions (e.g. LlavaNextModel).
    roots: its children that were loaded (everything but the language model).
    architecture: config.architectures[0].
    """

    base: nn.Module
    roots: tuple[str, ...]
    architecture: str


def load_media_modules(
    path: Path, config: Any, *, dtype: torch.dtype, device: torch.device
) -> MediaModules:
    architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    model = build_on_meta(lambda: _model_class(architecture)(config))
    base = _feature_module(model, architecture)
    roots = media_roots(base, config)
    media = _MediaView(base, roots)
    load_tower_weights(media, path, roots, dtype=dtype, device=device)
    base.eval().requires_grad_(False)
    return MediaModules(base, roots, architecture)


def _model_class(architecture: str) -> type[nn.Module]:
    import transformers

    cls = getattr(transformers, architecture, None)
    if cls is None:
        raise Unsupported(
            f"{architecture} is not a transformers class in this installation "
            f"(transformers {transformers.__version__}); it has no generic media encoder"
        )
    return cls


def _feature_module(model: nn.Module, architecture: str) -> nn.Module:
    """The module that defines the feature functions and holds the media children."""
    inner = getattr(model, "model", None)
    if architecture in _FEATURE_ADAPTERS:
        return _FEATURE_ADAPTERS[architecture](inner)
    for candidate in (inner, model):
        if isinstance(candidate, nn.Module) and _children_defining_features(candidate):
            return candidate
    raise Unsupported(
        f"{architecture} has no media encoder: it defines no get_image_features, "
        "get_video_features or get_audio_features"
    )


def _children_defining_features(module: nn.Module) -> bool:
    return any(callable(getattr(type(module), m, None)) for m in _FEATURE_METHODS)


def media_roots(base: nn.Module, config: Any = None) -> tuple[str, ...]:
    """The base's direct children and parameters that are not the language model."""
    if declared := getattr(base, "media_roots", None):  # a feature adapter names its own
        return tuple(declared)
    language = [name for name in _LANGUAGE_MODEL_CHILDREN if hasattr(base, name)]
    if not language:
        return _sub_config_children(base, config)
    names = [name for name, _ in base.named_children() if name not in language]
    names += [name for name, _ in base.named_parameters(recurse=False)]
    return tuple(names)


_MEDIA_SUB_CONFIGS = ("vision_config", "vq_config", "audio_config")


def _sub_config_children(base: nn.Module, config: Any) -> tuple[str, ...]:
    """The children of a decoder-shaped base that a media sub-config built (Chameleon's
    `vqmodel` from `vq_config`), told apart by their config's model_type."""
    media_types = {
        getattr(getattr(config, name, None), "model_type", None) for name in _MEDIA_SUB_CONFIGS
    } - {None}
    names = tuple(
        name
        for name, child in base.named_children()
        if getattr(getattr(child, "config", None), "model_type", None) in media_types
    )
    if not names:
        raise Unsupported(
            f"{type(base).__name__} has no language_model or text_model child and no child "
            "built from a media sub-config: its media modules cannot be told apart from the "
            "language model"
        )
    return names


class _MediaView(nn.Module):
    """The base's media children under their own names, for loading (shares their tensors)."""

    def __init__(self, base: nn.Module, roots: tuple[str, ...]) -> None:
        super().__init__()
        for name in roots:
            value = getattr(base, name)
            if isinstance(value, nn.Parameter):
                self.register_parameter(name, value)
            else:
                self.add_module(name, value)
        self._base = [base]  # a list: not a child, so not part of the state dict

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state, strict=strict, assign=assign)
        base = self._base[0]
        for name in self._parameters:  # `assign` replaced them: hand the new ones back
            setattr(base, name, self._parameters[name])
        for name, module in self._modules.items():
            setattr(base, name, module)
        return result
