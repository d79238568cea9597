"""Encoded media kept under handles (PutMedia), so later prompts skip the upload and encode."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from protos.errors import InvalidRequest, UnknownMedia

HANDLE_PREFIX = "media-"


class MediaStore:
    """LRU of encode results bounded by embedding bytes; a handle names the content."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, modality: str, result: Any) -> str:
        """Stores `result` (an EncodeResult) and returns its handle."""
        handle = HANDLE_PREFIX + result.content_hash[:32]
        size = _nbytes(result)
        with self._lock:
            if handle in self._entries:
                self._entries.move_to_end(handle)
                return handle
            self._entries[handle] = (modality, result)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= _nbytes(evicted)
        return handle

    def get(self, handle: str, modality: str) -> Any:
        """The stored result; NOT_FOUND for unknown handles, INVALID_ARGUMENT for the wrong kind."""
        with self._lock:
            entry = self._entries.get(handle)
            if entry is not None:
                self._entries.move_to_end(handle)
        if entry is None:
            raise UnknownMedia(
                f"unknown media handle {handle!r}: it was never created here or has been evicted"
            )
        stored_modality, result = entry
        if stored_modality != modality:
            raise InvalidRequest(
                f"media handle {handle!r} holds a(n) {stored_modality}, not a(n) {modality}"
            )
        return result

    def __len__(self) -> int:
        return len(self._entries)


def _nbytes(result: Any) -> int:
    emb = result.embeddings
    return int(emb.numel() * emb.element_size())
