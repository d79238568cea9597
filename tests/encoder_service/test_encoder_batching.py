"""Concurrent Encoder calls share tower calls through the micro-batcher."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoder_service import Encoder
from protos.encoder_messages import MediaItem
from tests.encoder_service.samples import encode_image, random_frames


def test_eight_concurrent_encode_calls_share_tower_calls(llava_path: Path) -> None:
    images = [
        encode_image(Image.fromarray(random_frames(1, 32, 32, seed=s)[0]), "PNG") for s in range(8)
    ]
    with Encoder.from_pretrained(llava_path, "image", cache_bytes=0, max_wait_s=0.0) as alone:
        expected = [alone.encode([MediaItem(data=data)])[0].embeddings for data in images]
        assert alone.info().num_tower_calls == 8
    with Encoder.from_pretrained(llava_path, "image", cache_bytes=0, max_wait_s=0.05) as shared:
        barrier = threading.Barrier(8)

        def call(data: bytes) -> torch.Tensor:
            barrier.wait()
            return shared.encode([MediaItem(data=data)])[0].embeddings

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, images))
        info = shared.info()
    assert info.num_requests == 8 and info.num_encoded == 8
    assert info.num_tower_calls < 8
    for ours, reference in zip(results, expected, strict=True):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_concurrent_callers_of_the_same_image_run_it_once(llava_path: Path) -> None:
    data = encode_image(Image.fromarray(np.full((32, 32, 3), 7, np.uint8)), "PNG")
    with Encoder.from_pretrained(llava_path, "image", cache_bytes=0, max_wait_s=0.05) as encoder:
        barrier = threading.Barrier(4)

        def call(_: int) -> torch.Tensor:
            barrier.wait()
            return encoder.encode([MediaItem(data=data)])[0].embeddings

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, range(4)))
        info = encoder.info()
    assert all(torch.equal(result, results[0]) for result in results)
    assert info.num_encoded < 4  # deduplicated inside the shared batch(es)


def test_a_cpu_tower_call_holds_at_most_the_cpu_default(llava_path: Path) -> None:
    """On a CPU, a burst of concurrent callers runs in calls of at most CPU_MAX_BATCH_SIZE
    items (results come back call by call); an explicit max_batch_size still rules."""
    from encoder_service.encoder import CPU_MAX_BATCH_SIZE, default_max_batch_size

    assert default_max_batch_size("cpu") == CPU_MAX_BATCH_SIZE
    assert default_max_batch_size("cuda:1") > CPU_MAX_BATCH_SIZE
    images = [
        encode_image(Image.fromarray(random_frames(1, 32, 32, seed=s)[0]), "PNG") for s in range(12)
    ]
    sizes: list[int] = []
    for limit in (None, 12):
        sizes.clear()
        with Encoder.from_pretrained(
            llava_path,
            "image",
            cache_bytes=0,
            max_wait_s=0.2,
            max_batch_size=limit,
            on_tower_call=lambda n, _s: sizes.append(n),
        ) as encoder:
            barrier = threading.Barrier(len(images))

            def call(
                data: bytes, encoder: Encoder = encoder, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                encoder.encode([MediaItem(data=data)])

            with ThreadPoolExecutor(len(images)) as pool:
                list(pool.map(call, images))
        assert sum(sizes) == len(images)
        if limit is None:
            assert encoder.max_batch_size == CPU_MAX_BATCH_SIZE
            assert max(sizes) == CPU_MAX_BATCH_SIZE
        else:
            assert max(sizes) > CPU_MAX_BATCH_SIZE  # the burst shares calls past the default
