"""Admission and memory guards of the encoder core: a bound on items in flight
(--max-queued-items), decoding on a few fixed threads whatever the number of callers (per-thread
decoder buffers made RSS grow with every new caller thread), and the tower-call hook that
feeds the batch metrics."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from encoder_service import Encoder
from encoder_service.errors import MediaError
from encoder_service.metrics import EncoderMetrics
from protos.encoder_messages import MediaItem
from protos.errors import Overloaded
from tests.encoder_service.samples import encode_image, make_video, random_frames


def test_items_past_the_bound_are_refused_with_the_numbers(llava_path: Path) -> None:
    with Encoder.from_pretrained(llava_path, "image", max_queued_items=3) as encoder:
        with encoder.admit(2):
            assert encoder.num_queued_items == 2
            expected = (
                r"the image encoder is full: 2 items are queued and this request brings 2 "
                r"\(--max-queued-items 3\); retry shortly or add encoder replicas"
            )
            with pytest.raises(Overloaded, match=expected), encoder.admit(2):
                pass
            with encoder.admit(1):
                assert encoder.num_queued_items == 3
        assert encoder.num_queued_items == 0


def test_many_callers_decode_on_the_few_decode_threads(qwen2_vl_path: Path) -> None:
    videos = [make_video(random_frames(2, 28, 28, seed=seed), fps=2) for seed in range(16)]
    decoding_threads: set[str] = set()
    with Encoder.from_pretrained(
        qwen2_vl_path, "video", cache_bytes=0, num_decode_threads=2
    ) as encoder:
        prepare = encoder._prepare

        def spying(miss: object) -> object:
            decoding_threads.add(threading.current_thread().name)
            return prepare(miss)

        encoder._prepare = spying  # type: ignore[method-assign]
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda v: encoder.encode([MediaItem(data=v)]), videos))
    assert len(results) == 16 and all(r[0].num_tokens > 0 for r in results)
    assert len(decoding_threads) <= 2
    assert all(name.startswith("decode-video") for name in decoding_threads)


def test_a_bad_item_still_names_itself_from_the_decode_threads(llava_path: Path) -> None:
    good = encode_image(Image.fromarray(np.zeros((16, 16, 3), np.uint8)), "PNG")
    items = [MediaItem(data=good), MediaItem(data=b"not an image")]
    with Encoder.from_pretrained(llava_path, "image", cache_bytes=0) as encoder:
        with pytest.raises(MediaError, match="image 1"):
            encoder.encode(items)
        assert encoder.encode(items[:1])[0].num_tokens > 0


def test_tower_calls_and_cache_lookups_reach_the_metrics(llava_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = EncoderMetrics(registry, "image")
    image = encode_image(Image.fromarray(np.full((16, 16, 3), 9, np.uint8)), "PNG")
    with Encoder.from_pretrained(llava_path, "image") as encoder:
        metrics.attach(encoder)
        encoder.encode([MediaItem(data=image)])
        encoder.encode([MediaItem(data=image)])  # a cache hit

        def value(name: str) -> float | None:
            return registry.get_sample_value(name, {"modality": "image"})

        assert value("meshserve:mm_cache_queries_total") == 2
        assert value("meshserve:mm_cache_hits_total") == 1
        assert value("meshserve:encoder_batch_size_count") == 1
        assert value("meshserve:encoder_batch_size_sum") == 1
        assert value("meshserve:encoder_batch_latency_seconds_count") == 1
        assert value("meshserve:num_items_queued") == 0
