"""Tiny checkpoints of vision-language models that run on the generic, processor-driven path:
Gemma 3, PaliGemma, Mistral 3 and LLaVA with a Pixtral tower, BLIP-2, Chameleon and Fuyu."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.tools.tiny_models.gemma import build_gemma3, build_paligemma
from gateway.tools.tiny_models.pixtral import build_llava_pixtral, build_mistral3
from gateway.tools.tiny_models.vision_misc import build_blip2, build_chameleon, build_fuyu

GENERIC_VLM_BUILDERS: dict[str, Callable[[Path], None]] = {
    "gemma3": build_gemma3,
    "paligemma": build_paligemma,
    "mistral3": build_mistral3,
    "llava_pixtral": build_llava_pixtral,
    "blip2": build_blip2,
    "chameleon": build_chameleon,
    "fuyu": build_fuyu,
}
GENERIC_VLM_MODELS: tuple[str, ...] = tuple(GENERIC_VLM_BUILDERS)
