"""Content hashes of media items and an LRU cache of their embeddings, bounded by bytes."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from protos.encoder_messages import CacheStats

_HASH_VERSION = b"meshserve-media-v1"


def content_hash(
    data: bytes | bytearray | memoryview, options: Mapping[str, Any], model_id: str
) -> str:
    """sha256 hex over the item's bytes, its processing options (key order ignored) and the
    model identity. Two items share a hash exactly when they must share embeddings."""
    digest = hashlib.sha256(_HASH_VERSION)
    for part in (model_id.encode(), _canonical(options).encode()):
        digest.update(len(part).to_bytes(8, "little"))  # NOTE: length-prefixed: no ambiguity
        digest.update(part)
    digest.update(memoryview(data))
    return digest.hexdigest()


def _canonical(options: Mapping[str, Any]) -> str:
    return json.dumps(dict(options), sort_keys=True, separators=(",", ":"), default=repr)


@dataclass(frozen=True, slots=True, eq=False)
class CachedEncoding:
    """What the cache keeps for one item.

    Args:
        embeddings: [num_tokens, hidden] in the language model's hidden size.
        metadata: model-specific facts (e.g. {"grid_thw": (t, h, w)}).
    """

    embeddings: torch.Tensor  # [num_tokens, hidden]
    metadata: Mapping[str, Any]

    @property
    def num_bytes(self) -> int:
        return self.embeddings.numel() * self.embeddings.element_size()


class EmbeddingCache:
    """LRU map content hash -> CachedEncoding, bounded by the bytes of the tensors; thread-safe.

    An entry larger than `max_bytes` is not stored; `max_bytes=0` disables caching.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedEncoding] = OrderedDict()
        self._lock = threading.Lock()
        self._num_bytes = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, key: str) -> CachedEncoding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def put(self, key: str, entry: CachedEncoding) -> bool:
        """Stores `entry`, evicting least recently used ones; False when it cannot fit."""
        size = entry.num_bytes
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._num_bytes -= old.num_bytes
            while self._entries and self._num_bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._num_bytes -= evicted.num_bytes
                self._evictions += 1
            self._entries[key] = entry
            self._num_bytes += size
            return True

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._num_bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                num_entries=len(self._entries),
                num_bytes=self._num_bytes,
                max_bytes=self.max_bytes,
            )
