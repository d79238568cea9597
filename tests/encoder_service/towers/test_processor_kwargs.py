"""--mm-processor-kwargs: checked at start-up, applied to every item, part of the cache key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from encoder_service import Encoder
from encoder_service.errors import MediaError
from encoder_service.media import MediaLimits
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


def test_a_requests_sizes_are_bounded_by_the_encoders_pixel_limit() -> None:
    limits = MediaLimits(max_pixels=1_000_000)
    with Encoder.from_pretrained(tiny_model_path("qwen2_vl"), "image", limits=limits) as encoder:
        for kwargs, named in [
            ({"min_pixels": 4_000_000}, r"min_pixels=4000000 is over the limit of 1000000"),
            ({"size": {"shortest_edge": 3136, "longest_edge": 2_000_000}}, "size.longest_edge"),
            ({"max_pixels": "abc"}, r"max_pixels must be a positive integer, got 'abc'"),
            ({"max_pixels": True}, r"max_pixels must be a positive integer"),
        ]:
            with pytest.raises(MediaError, match=rf"^image 0: mm_processor_kwargs: .*{named}"):
                encoder.encode([MediaItem(data=_png(), processor_kwargs=kwargs)])
        (within,) = encoder.encode([MediaItem(data=_png(), processor_kwargs={"max_pixels": 3136})])
    assert within.num_tokens == 4  # a value within the limit still applies (56 x 56: 4 tokens)


def test_an_edge_length_size_is_bounded_by_its_square() -> None:
    limits = MediaLimits(max_pixels=1_000_000)
    item = MediaItem(data=_png(), processor_kwargs={"size": {"shortest_edge": 1001}})
    with (
        Encoder.from_pretrained(tiny_model_path("llava"), "image", limits=limits) as encoder,
        pytest.raises(MediaError, match=r"size.shortest_edge=1001 is over the limit"),
    ):
        encoder.encode([item])


def test_a_processor_refusing_a_value_is_that_items_media_error() -> None:
    with Encoder.from_pretrained(tiny_model_path("llava"), "image") as encoder:
        bad = MediaItem(data=_png(seed=1), processor_kwargs={"do_normalize": "abc"})
        with pytest.raises(MediaError, match=r"^image 1: the processor refused it: .*do_normalize"):
            encoder.encode([MediaItem(data=_png()), bad])
        assert encoder.encode([MediaItem(data=_png())])[0].num_tokens > 0  # nothing else lost
