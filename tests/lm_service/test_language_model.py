"""Language-model weight names found from the model class, and checkpoints that lack some."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway.tools.tiny_models import tiny_model_path  # noqa: E402
from lm_service.models.language_model import language_model_names  # noqa: E402
from lm_service.models.loader import load_config  # noqa: E402
from lm_service.models.registry import load_model  # noqa: E402
from protos.errors import InvalidRequest  # noqa: E402


@pytest.mark.parametrize(
    ("model", "name", "expected"),
    [
        # LLaVA as transformers 5 saves it: the legacy `language_model.model.*` layout
        ("llava", "language_model.model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
        ("llava", "language_model.lm_head.weight", "lm_head.weight"),
        ("llava", "vision_tower.vision_model.embeddings.class_embedding", None),
        ("llava", "multi_modal_projector.linear_1.weight", None),
        # Qwen2-VL's hub layout: the LM at `model.*` next to `visual.*`
        ("qwen2_vl", "model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.q_proj.bias"),
        ("qwen2_vl", "lm_head.weight", "lm_head.weight"),
        ("qwen2_vl", "visual.blocks.0.attn.qkv.weight", None),
        ("qwen2_vl", "model.language_model.norm.weight", "model.norm.weight"),
        # Idefics3: the LM is `model.text_model`, the projector `model.connector`
        ("idefics3", "model.text_model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("idefics3", "model.text_model.layers.0.input_layernorm.weight", "model.layers.0.input_layernorm.weight"),
        ("idefics3", "lm_head.weight", "lm_head.weight"),
        ("idefics3", "model.connector.modality_projection.proj.weight", None),
        ("idefics3", "model.vision_model.post_layernorm.weight", None),
        ("llava_next", "image_newline", None),
        ("qwen2_audio", "audio_tower.conv1.weight", None),
    ],
)  # fmt: skip
def test_text_names_come_from_the_model_class(model: str, name: str, expected: str | None) -> None:
    names = language_model_names(load_config(tiny_model_path(model)))
    assert names.text_name(name) == expected


def test_names_of_a_renamed_architecture_come_from_its_config_class() -> None:
    """The seed's Mantis: a LLaVA checkpoint whose architecture transformers has no class for."""
    config = load_config(
        tiny_model_path("llava"), hf_overrides={"architectures": ["MantisForConditionalGeneration"]}
    )
    names = language_model_names(config)
    assert names.text_name("language_model.model.norm.weight") == "model.norm.weight"


def test_a_language_model_held_whole_gives_its_base_and_head() -> None:
    """Remote-code classes (InternVLChatModel) keep a whole `*ForCausalLM` as `language_model`:
    its base model is the decoder, its own head the LM head."""
    from torch import nn
    from transformers import LlamaForCausalLM, PreTrainedModel

    config = load_config(tiny_model_path("llava"))

    class HoldsWholeLM(PreTrainedModel):
        config_class = type(config)

        def __init__(self, config: object) -> None:
            super().__init__(config)
            self.vision_model = nn.Linear(2, 2)
            self.language_model = LlamaForCausalLM(config.text_config)

    names = language_model_names(config, HoldsWholeLM)
    up = "model.layers.0.mlp.up_proj.weight"
    assert names.text_name(f"language_model.{up}") == up
    assert names.text_name("language_model.lm_head.weight") == "lm_head.weight"
    assert names.text_name("vision_model.weight") is None


def _without(source: Path, target: Path, dropped: tuple[str, ...]) -> Path:
    """A copy of checkpoint `source` whose weights starting with `dropped` are gone."""
    shutil.copytree(source, target)
    weights = load_file(source / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith(dropped)}
    assert len(kept) < len(weights), f"nothing starts with {dropped}"
    save_file(kept, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.parametrize(
    ("model", "model_impl", "dropped", "named"),
    [
        ("idefics3", "transformers", ("model.text_model.layers.1.",), "model.text_model.layers.1"),
        ("idefics3", "transformers", ("model.text_model.norm.",), "model.text_model.norm"),
        ("idefics3", "transformers", ("lm_head.",), "lm_head"),
        ("llava", "transformers", ("language_model.model.layers.0.mlp.",), "model.language_model.layers.0"),
        ("llava", "native", ("language_model.model.layers.0.mlp.",), "model.layers.0.mlp"),
    ],
)  # fmt: skip
def test_missing_language_model_weights_are_refused_naming_the_prefix(
    tmp_path: Path, model: str, model_impl: str, dropped: tuple[str, ...], named: str
) -> None:
    """A checkpoint that would leave language-model weights random never starts."""
    broken = _without(tiny_model_path(model), tmp_path / model, dropped)
    with pytest.raises(InvalidRequest, match=named.replace(".", r"\.")):
        load_model(str(broken), model_impl=model_impl)


def test_a_tied_head_is_not_missing() -> None:
    """InternVL ties its head to the embeddings and stores none: that is complete."""
    loaded = load_model(str(tiny_model_path("internvl")), model_impl="transformers")
    head = loaded.model.hf_model.get_output_embeddings().weight
    assert head.data_ptr() == loaded.model.decoder.get_input_embeddings().weight.data_ptr()
