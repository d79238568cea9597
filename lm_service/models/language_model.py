"""Which weights of a multimodal checkpoint are its language model, found from the model class.

The checkpoint's HF class (`config.architectures[0]`, else the class transformers maps the
config to) is built on the meta device: its decoder (`get_decoder()`) and output embeddings
(`get_output_embeddings()`) are the language model, and their qualified names in the class
(`model.language_model`, `model.text_model`, `lm_head`) are the prefixes to keep. Checkpoint
names are first brought to the class's names by transformers' own renamings (those it applies
when loading, e.g. the legacy `language_model.model.*` -> `model.language_model.*`), so every
layout transformers loads is read here too, and a new architecture needs no prefix list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from protos.errors import Unsupported

TEXT_DECODER_PREFIX = "model."
TEXT_HEAD_PREFIX = "lm_head."


@dataclass(frozen=True, slots=True, eq=False)
class LanguageModelNames:
    """Maps checkpoint weight names to the text model's (`model.*`, `lm_head.*`).

    Args:
        architecture: the multimodal class the names were found from.
        decoder_prefix: the decoder's qualified name in that class, with a trailing dot.
        head_prefix: the LM head's, with a trailing dot ("" when the class has none).
        renamings: transformers' renamings from checkpoint names to the class's.
        class_names: every parameter and buffer name of the class -> True (the renamings
            look names up in it).
        base_model_prefix: the class's `base_model_prefix` (for the renamings).
    """

    architecture: str
    decoder_prefix: str
    head_prefix: str
    renamings: tuple[Any, ...] = ()
    class_names: Mapping[str, bool] = field(default_factory=dict)
    base_model_prefix: str = ""

    def text_name(self, checkpoint_name: str) -> str | None:
        """The text model's name for a checkpoint weight; None when it is no LM weight."""
        name = self.class_name(checkpoint_name)
        if name.startswith(self.decoder_prefix):
            return TEXT_DECODER_PREFIX + name[len(self.decoder_prefix) :]
        if self.head_prefix and name.startswith(self.head_prefix):
            return TEXT_HEAD_PREFIX + name[len(self.head_prefix) :]
        return None

    def class_name(self, checkpoint_name: str) -> str:
        """The name the checkpoint's weight has in the multimodal class."""
        if not self.renamings:
            return checkpoint_name
        from transformers.core_model_loading import rename_source_key

        name, _ = rename_source_key(
            checkpoint_name, list(self.renamings), [], self.base_model_prefix, self.class_names
        )
        return name

    def missing_prefixes(self, text_names: Iterable[str]) -> list[str]:
        """The class's prefixes of missing text-model weights, one per layer or top module:
        `model.layers.1.mlp.up_proj.weight` -> `model.text_model.layers.1`."""
        found: dict[str, None] = {}
        for name in sorted(text_names):
            if name.startswith(TEXT_HEAD_PREFIX):
                found[self.head_prefix.rstrip(".") or "lm_head"] = None
                continue
            parts = name.removeprefix(TEXT_DECODER_PREFIX).split(".")
            depth = 2 if len(parts) > 2 and parts[1].isdigit() else 1
            found[self.decoder_prefix + ".".join(parts[:depth])] = None
        return list(found)


def language_model_names(config: Any, model_class: type | None = None) -> LanguageModelNames:
    """The language model's names in the checkpoint's multimodal class (`model_class`, else
    the one `config` names)."""
    model = _meta_model(config, model_class or _model_class(config))
    qualified = {id(module): name for name, module in model.named_modules()}
    decoder, head = _decoder_and_head(model)
    decoder_name = qualified.get(id(decoder))
    if not decoder_name:
        raise Unsupported(
            f"{_architecture(config)} has no language-model decoder that transformers' "
            "get_decoder() finds, so its language-model weights cannot be told apart"
        )
    head_name = qualified.get(id(head), "") if head is not None else ""
    return LanguageModelNames(
        architecture=_architecture(config),
        decoder_prefix=decoder_name + ".",
        head_prefix=head_name + "." if head_name else "",
        renamings=tuple(_renamings(model)),
        class_names=dict.fromkeys(model.state_dict(), True),
        base_model_prefix=str(getattr(model, "base_model_prefix", "") or ""),
    )


def _architecture(config: Any) -> str:
    return (getattr(config, "architectures", None) or [type(config).__name__])[0]


def _meta_model(config: Any, model_class: type) -> nn.Module:
    with torch.device("meta"):
        return model_class._from_config(config)


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The decoder and the LM head; a language model held whole (a `*ForCausalLM` child, as
    remote-code classes such as InternVLChatModel do) gives its own base model and head."""
    decoder = model.get_decoder()
    get_head = getattr(decoder, "get_output_embeddings", None)
    inner_head = get_head() if get_head is not None and decoder is not model else None
    base = getattr(decoder, "base_model", decoder)
    if inner_head is not None and base is not decoder:
        return base, inner_head
    return decoder, model.get_output_embeddings()


def _model_class(config: Any) -> type:
    """`config.architectures[0]` as a transformers class, else the class transformers maps the
    config to (an architecture renamed by hf_overrides, e.g. the seed's Mantis)."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    found = getattr(transformers, _architecture(config), None)
    if isinstance(found, type) and hasattr(found, "_from_config"):
        return found
    auto_map = getattr(config, "auto_map", None) or {}
    for key in ("AutoModelForImageTextToText", "AutoModelForCausalLM", "AutoModel"):
        if key in auto_map:  # NOTE: the config was read with trust_remote_code: its code is here
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            return get_class_from_dynamic_module(auto_map[key], config._name_or_path)
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM, AutoModel):
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)]
    raise Unsupported(
        f"{_architecture(config)} is not a transformers class (transformers "
        f"{transformers.__version__}): its language-model weights cannot be found"
    )


def _renamings(model: nn.Module) -> list[Any]:
    """transformers' checkpoint renamings for the class (none in versions without them)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return []
    return [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
