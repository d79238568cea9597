"""Which tower encodes a checkpoint, and what the generic tower finds in it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from encoder_service.registry import tower_class
from encoder_service.towers import GenericTower, LlavaTower
from encoder_service.towers.media_modules import load_media_modules
from gateway.prompt.placeholders import LLAVA, SPLICED, family_for
from gateway.tools.tiny_models import tiny_model_path


def _llava(vision_model_type: str) -> SimpleNamespace:
    return SimpleNamespace(vision_config=SimpleNamespace(model_type=vision_model_type))


@pytest.mark.parametrize(
    ("vision", "tower", "family"),
    [
        ("clip_vision_model", LlavaTower, LLAVA),
        ("siglip_vision_model", LlavaTower, LLAVA),
        ("pixtral", GenericTower, SPLICED),  # pixtral-12b: [IMG_BREAK] rows, image sizes
    ],
)
def test_llava_routes_by_its_vision_tower(vision: str, tower: type, family: object) -> None:
    """The encoder and the gateway agree: a native LLaVA row only for CLIP/SigLIP towers."""
    architecture = "LlavaForConditionalGeneration"
    assert tower_class(architecture, _llava(vision)) is tower
    assert family_for(architecture, _llava(vision)) is family


def test_a_decoder_shaped_base_loads_only_its_media_sub_config_modules() -> None:
    """Chameleon's base is the decoder itself (no language_model child): only the module a
    media sub-config built (its VQ model) is read, the decoder stays on the meta device."""
    from transformers import AutoConfig

    path = tiny_model_path("chameleon")
    media = load_media_modules(
        path, AutoConfig.from_pretrained(path), dtype=torch.float32, device=torch.device("cpu")
    )
    assert media.roots == ("vqmodel",)
    assert media.base.layers[0].mlp.gate_proj.weight.is_meta
    assert not any(p.is_meta for p in media.base.vqmodel.parameters())


def test_the_pixtral_processor_loads_without_torchvision() -> None:
    """transformers exports a torchvision placeholder for PixtralProcessor; the real class
    needs only a helper that the PIL image processor's module has too."""
    from protos.hf_processor import load_processor

    processor = load_processor(tiny_model_path("mistral3"))
    assert type(processor).__name__ == "PixtralProcessor"
    assert type(processor.image_processor).__name__ == "PixtralImageProcessorPil"
    assert processor.image_break_token == "[IMG_BREAK]"
