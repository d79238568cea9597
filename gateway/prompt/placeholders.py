"""Per-family placeholder rules: which token stands for a media item, what surrounds it.

Architectures with a native tower have a row in `FAMILIES`; every other model with media is
SPLICED: its encoder returns, per item, the text that replaces the item's placeholder (from the
checkpoint's HF processor), and prompt building splices it in without knowing the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos.hf_processor import load_processor


@dataclass(frozen=True, slots=True)
class PlaceholderFormat:
    """How one item of a modality is written in a raw prompt.

    Args:
        pad_id_fields: config fields that hold the pad token id; the first one set wins.
        default_pad: the pad token when no field is set.
        prefix, suffix: text around the pad token in a raw prompt ("<|vision_start|>").
    """

    pad_id_fields: tuple[str, ...]
    default_pad: str
    prefix: str = ""
    suffix: str = ""


@dataclass(frozen=True, slots=True)
class PromptFamily:
    """Per-family prompt rules.

    Args:
        formats: modality -> placeholder format; a modality missing here is refused.
        mrope: the model uses M-RoPE; image/video token counts come from `grid_thw`.
        time_scaled_video: video temporal positions step by `second_per_grid_t *
            tokens_per_second` (Qwen2.5-VL) instead of 1 (Qwen2-VL).
    """

    formats: Mapping[str, PlaceholderFormat] = field(default_factory=dict)
    mrope: bool = False
    time_scaled_video: bool = False
    spliced: bool = False  # the encoder's processor gives each item's replacement text
    # the vision towers (vision_config.model_type) the row is for; None: any
    vision_model_types: frozenset[str] | None = None


LLAVA_IMAGE = PlaceholderFormat(("image_token_index", "image_token_id"), "<image>")
QWEN_VL_IMAGE = PlaceholderFormat(
    ("image_token_id",), "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
)
QWEN_VL_VIDEO = PlaceholderFormat(
    ("video_token_id",), "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
)
QWEN_AUDIO = PlaceholderFormat(
    ("audio_token_index", "audio_token_id"), "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
)

# NOTE: encoder_service.towers.llava.NATIVE_LLAVA_VISION says the same to the encoder: other
# LLaVA towers (Pixtral, pixtral-12b) run the generic tower, so their prompts are SPLICED.
NATIVE_LLAVA_VISION = frozenset({"clip_vision_model", "siglip_vision_model"})
LLAVA = PromptFamily({"image": LLAVA_IMAGE}, vision_model_types=NATIVE_LLAVA_VISION)
TEXT_ONLY = PromptFamily()
SPLICED = PromptFamily(spliced=True)
FAMILIES: Mapping[str, PromptFamily] = {
    "LlavaForConditionalGeneration": LLAVA,
    # The seed: Mantis runs as LLaVA with --hf-overrides '{"architectures": [...]}'.
    "MantisForConditionalGeneration": LLAVA,
    "Qwen2VLForConditionalGeneration": PromptFamily(
        {"image": QWEN_VL_IMAGE, "video": QWEN_VL_VIDEO}, mrope=True
    ),
    "Qwen2_5_VLForConditionalGeneration": PromptFamily(
        {"image": QWEN_VL_IMAGE, "video": QWEN_VL_VIDEO}, mrope=True, time_scaled_video=True
    ),
    "Qwen2AudioForConditionalGeneration": PromptFamily({"audio": QWEN_AUDIO}),
}


def family_for(architecture: str, config: Any) -> PromptFamily:
    """The family row of `architecture`; SPLICED for any other model with media sub-configs
    (its encoder's processor says how each item enters the prompt), else text-only."""
    family = FAMILIES.get(architecture)
    if family is not None and _family_takes(family, config):
        return family
    if any(getattr(config, name, None) is not None for name in MEDIA_SUB_CONFIGS):
        return SPLICED
    return TEXT_ONLY


def _family_takes(family: PromptFamily, config: Any) -> bool:
    if family.vision_model_types is None:
        return True
    model_type = getattr(getattr(config, "vision_config", None), "model_type", None)
    return model_type is None or model_type in family.vision_model_types


MEDIA_SUB_CONFIGS = ("vision_config", "audio_config", "vq_config", "qformer_config")
_TOKEN_ATTRIBUTES = {"image": "image_token", "video": "video_token", "audio": "audio_token"}


def processor_tokens(
    model: str | Path, tokenizer: Any, processor: Any = None
) -> dict[str, ModalityTokens]:
    """Each modality's placeholder as the checkpoint's own HF processor names it.

    The processor is read for its token names only: no media is processed here.
    """
    processor = processor if processor is not None else load_processor(model)
    tokens = {}
    for modality, attribute in _TOKEN_ATTRIBUTES.items():
        placeholder = getattr(processor, attribute, None)
        if placeholder:
            token_id = tokenizer.convert_tokens_to_ids(str(placeholder))
            tokens[modality] = ModalityTokens(str(placeholder), int(token_id), str(placeholder))
    return tokens


@dataclass(frozen=True, slots=True)
class ModalityTokens:
    """A modality's placeholder resolved against one tokenizer."""

    pad_token: str  # repeated once per embedding row
    pad_token_id: int
    placeholder: str  # one item in a raw prompt: prefix + pad_token + suffix


def resolve_tokens(fmt: PlaceholderFormat, config: Any, tokenizer: Any) -> ModalityTokens:
    """Look up the pad token of `fmt` in the config (by id) or fall back to its default."""
    pad_id = next(
        (getattr(config, f) for f in fmt.pad_id_fields if getattr(config, f, None) is not None),
        None,
    )
    pad_token = tokenizer.convert_ids_to_tokens(pad_id) if pad_id is not None else fmt.default_pad
    token_id = tokenizer.convert_tokens_to_ids(pad_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no placeholder token {pad_token!r}")
    return ModalityTokens(pad_token, int(token_id), fmt.prefix + pad_token + fmt.suffix)
