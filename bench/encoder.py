"""Encoder throughput per modality: with and without the embedding cache, and the speed-up
of micro-batching 8 concurrent callers (vs the same calls made one after another).

Runs on the tiny test models (built offline), so absolute numbers measure our per-item
overhead (decode, preprocess, hashing, batching) more than tower FLOPs.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from encoder_service import Encoder
from gateway.tools.tiny_models import tiny_model_path
from protos.encoder_messages import MediaItem

CASES = (("llava", "image"), ("qwen2_vl", "image"), ("qwen2_vl", "video"), ("qwen2_audio", "audio"))


def make_item(modality: str, model: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if modality == "image":
        size = 32 if model == "llava" else 112
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()
    if modality == "video":
        import av

        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="mp4") as container:
            stream = container.add_stream("mpeg4", rate=4)
            stream.width = stream.height = 56
            stream.pix_fmt = "yuv420p"
            for _ in range(8):
                frame = rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return buffer.getvalue()
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(rng.integers(-8000, 8000, 16000, dtype=np.int16).tobytes())
    return buffer.getvalue()


def items_per_second(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - start)


def bench_case(model: str, modality: str, n: int) -> None:
    path = str(tiny_model_path(model))
    items = [make_item(modality, model, seed) for seed in range(n)]
    options = {"num_frames": 8} if modality == "video" else {}
    cold = Encoder.from_pretrained(path, modality, cache_bytes=0)
    cached = Encoder.from_pretrained(path, modality, cache_bytes=256 << 20)
    cached.encode([MediaItem(data=d, options=options) for d in items])  # fill the cache

    def one_by_one(encoder: Encoder) -> int:
        for data in items:
            encoder.encode([MediaItem(data=data, options=options)])
        return len(items)

    def concurrent(encoder: Encoder, callers: int = 8) -> int:
        chunks = [items[i::callers] for i in range(callers)]
        threads = [
            threading.Thread(
                target=lambda c=c: [encoder.encode([MediaItem(data=d, options=options)]) for d in c]
            )
            for c in chunks
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(items)

    one_by_one(cold)  # warm-up
    no_cache = items_per_second(lambda: one_by_one(cold))
    with_cache = items_per_second(lambda: one_by_one(cached))
    before = cold.info().num_tower_calls
    batched = items_per_second(lambda: concurrent(cold))
    calls = cold.info().num_tower_calls - before
    print(
        f"{model:12s} {modality:6s} no cache {no_cache:8.1f} items/s   cached {with_cache:9.1f} "
        f"items/s ({with_cache / no_cache:5.1f}x)   8 concurrent callers {batched:8.1f} items/s "
        f"({batched / no_cache:4.2f}x, {len(items)} items in {calls} tower calls)"
    )
    cold.close()
    cached.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=64)
    args = parser.parse_args()
    for model, modality in CASES:
        bench_case(model, modality, args.items)


if __name__ == "__main__":
    main()
