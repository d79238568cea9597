"""Fixtures for the encoder tests: synthetic media made in-process, tiny checkpoints, encoders."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from encoder_service import Encoder
from gateway.tools.tiny_models import QWEN2_5_VL_VISION


@pytest.fixture(scope="session")
def llava_path(tiny_model: Callable[[str], Path]) -> Path:
    return tiny_model("llava")


@pytest.fixture(scope="session")
def qwen2_vl_path(tiny_model: Callable[[str], Path]) -> Path:
    return tiny_model("qwen2_vl")


@pytest.fixture(scope="session")
def qwen2_audio_path(tiny_model: Callable[[str], Path]) -> Path:
    return tiny_model("qwen2_audio")


@pytest.fixture(scope="session")
def qwen2_5_vl_path(qwen2_vl_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL (window attention, full attention in block 1) with the
    Qwen2-VL tiny model's processor configs."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = tmp_path_factory.mktemp("qwen2_5_vl")
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=32,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(QWEN2_5_VL_VISION),
        image_token_id=10,
        video_token_id=11,
        vision_start_token_id=12,
        vision_end_token_id=13,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(out)
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        shutil.copy(qwen2_vl_path / name, out / name)
    return out


@pytest.fixture(scope="session")
def llava_variant_path(llava_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaVA with vision_feature_layer=[-2, -1] and the "full" strategy (CLS kept)."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    out = tmp_path_factory.mktemp("llava_variant")
    config = AutoConfig.from_pretrained(llava_path)
    config.vision_feature_layer = [-2, -1]
    config.vision_feature_select_strategy = "full"
    torch.manual_seed(1)
    LlavaForConditionalGeneration(config).eval().save_pretrained(out)
    processor = json.loads((llava_path / "processor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps(processor["image_processor"]))
    return out


@pytest.fixture(scope="module")
def llava_encoder(llava_path: Path) -> Iterator[Encoder]:
    with Encoder.from_pretrained(llava_path, "image") as encoder:
        yield encoder


@pytest.fixture(scope="module")
def qwen2_vl_image_encoder(qwen2_vl_path: Path) -> Iterator[Encoder]:
    with Encoder.from_pretrained(qwen2_vl_path, "image") as encoder:
        yield encoder


@pytest.fixture(scope="module")
def qwen2_vl_video_encoder(qwen2_vl_path: Path) -> Iterator[Encoder]:
    with Encoder.from_pretrained(qwen2_vl_path, "video") as encoder:
        yield encoder


@pytest.fixture(scope="module")
def qwen2_audio_encoder(qwen2_audio_path: Path) -> Iterator[Encoder]:
    with Encoder.from_pretrained(qwen2_audio_path, "audio") as encoder:
        yield encoder
