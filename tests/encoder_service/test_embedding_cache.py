"""content_hash and the byte-bounded LRU EmbeddingCache."""

from __future__ import annotations

import threading

import pytest
import torch

from encoder_service.cache import CachedEncoding, EmbeddingCache, content_hash


def _entry(num_tokens: int, hidden: int = 4, fill: float = 0.0) -> CachedEncoding:
    return CachedEncoding(torch.full((num_tokens, hidden), fill), {"grid_thw": (1, 2, 2)})


def test_hash_is_stable_and_ignores_option_order() -> None:
    first = content_hash(b"pixels", {"fps": 2.0, "modality": "video"}, "model|float32")
    second = content_hash(b"pixels", {"modality": "video", "fps": 2.0}, "model|float32")
    assert first == second and len(first) == 64
    assert int(first, 16) >= 0  # hex digest


@pytest.mark.parametrize(
    ("data", "options", "model_id"),
    [
        (b"pixels!", {"fps": 2.0}, "m"),  # other bytes
        (b"pixels", {"fps": 1.0}, "m"),  # other options
        (b"pixels", {}, "m"),  # no options
        (b"pixels", {"fps": 2.0}, "other-model"),  # other model
    ],
)
def test_hash_changes_with_bytes_options_and_model(data, options, model_id) -> None:
    assert content_hash(data, options, model_id) != content_hash(b"pixels", {"fps": 2.0}, "m")


def test_hash_parts_cannot_be_shifted_into_each_other() -> None:
    assert content_hash(b"", {}, "ab") != content_hash(b"b", {}, "a")


def test_get_put_and_counters() -> None:
    cache = EmbeddingCache(max_bytes=1 << 20)
    assert cache.get("a") is None
    entry = _entry(3)
    assert cache.put("a", entry)
    assert cache.get("a") is entry and "a" in cache and len(cache) == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions) == (1, 1, 0)
    assert stats.num_bytes == 3 * 4 * 4 and stats.num_entries == 1


def test_byte_budget_evicts_least_recently_used() -> None:
    cache = EmbeddingCache(max_bytes=3 * 64)  # room for three 4x4 float32 entries
    for key in "abc":
        cache.put(key, _entry(4))
    cache.get("a")  # "b" is now the least recently used
    cache.put("d", _entry(4))
    assert "b" not in cache and all(key in cache for key in "acd")
    cache.put("e", _entry(8))  # 128 bytes: evicts two ("c", then "a")
    assert set("de") == {key for key in "abcde" if key in cache}
    stats = cache.stats()
    assert stats.evictions == 3 and stats.num_bytes == 64 + 128 <= stats.max_bytes


def test_replacing_a_key_keeps_the_byte_count_right() -> None:
    cache = EmbeddingCache(max_bytes=1024)
    cache.put("a", _entry(4))
    cache.put("a", _entry(8))
    assert cache.stats().num_bytes == 8 * 16 and len(cache) == 1


def test_entries_larger_than_the_budget_are_not_stored() -> None:
    cache = EmbeddingCache(max_bytes=100)
    cache.put("small", _entry(1))
    assert not cache.put("huge", _entry(100))
    assert "small" in cache and "huge" not in cache
    assert not EmbeddingCache(max_bytes=0).put("a", _entry(1))  # 0 disables caching


def test_concurrent_use_keeps_the_books_balanced() -> None:
    cache = EmbeddingCache(max_bytes=50 * 64)
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        barrier.wait()
        for i in range(300):
            key = f"k{(seed * 7 + i) % 80}"
            if cache.get(key) is None:
                cache.put(key, _entry(4, fill=float(i)))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == 8 * 300
    assert stats.num_entries == len(cache) <= 50 and stats.num_bytes == 64 * stats.num_entries
