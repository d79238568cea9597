"""--mm-processor-kwargs: checked at start-up, applied to every item, part of the cache key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from encoder_service import Encoder
from gateway.tools.tiny_models import tiny_model_path
from protos.encoder_messages import MediaItem
from protos.errors import InvalidRequest
from tests.encoder_service.samples import encode_image


def _png(size: int = 112, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels), "PNG")


def test_unknown_keys_are_refused_at_start_up_naming_the_accepted_ones() -> None:
    with pytest.raises(InvalidRequest, match=r"takes no 'bogus'; it takes .*do_normalize"):
        Encoder.from_pretrained(tiny_model_path("llava"), "image", mm_processor_kwargs={"bogus": 1})


def test_a_processor_argument_changes_the_embeddings_and_the_cache_key() -> None:
    data = _png()
    path = tiny_model_path("llava")
    with Encoder.from_pretrained(path, "image") as plain:
        default = plain.encode([MediaItem(data=data)])[0]
    kwargs = {"do_normalize": False}
    with Encoder.from_pretrained(path, "image", mm_processor_kwargs=kwargs) as raw:
        changed = raw.encode([MediaItem(data=data)])[0]
        assert raw.info().model_id.endswith('|{"do_normalize":false}')
    assert changed.content_hash != default.content_hash
    assert not torch.allclose(changed.embeddings, default.embeddings)


def test_qwen2_vl_max_pixels_bounds_the_image_tokens() -> None:
    data = _png(112)
    path = tiny_model_path("qwen2_vl")
    with Encoder.from_pretrained(path, "image") as plain:
        full = plain.encode([MediaItem(data=data)])[0]
    small = {"max_pixels": 56 * 56}
    with Encoder.from_pretrained(path, "image", mm_processor_kwargs=small) as bounded:
        fewer = bounded.encode([MediaItem(data=data)])[0]
    assert fewer.num_tokens < full.num_tokens
    t, h, w = fewer.metadata["grid_thw"]
    assert t * h * w // 4 == fewer.num_tokens  # the grid still describes the embeddings
