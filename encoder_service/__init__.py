"""encoder_service: media decoding under limits, HF preprocessing, encoder towers, an embedding
cache and micro-batching. The core imports no grpc; `server.py` is the thin servicer.

    enc = Encoder.from_pretrained(path, modality="image")
    out = enc.encode([MediaItem(data=png_bytes)])  # protos.encoder_messages.MediaItem
    out[0].embeddings  # [num_tokens, hidden]
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CachedEncoding": "encoder_service.cache",
    "EmbeddingCache": "encoder_service.cache",
    "content_hash": "encoder_service.cache",
    "Encoder": "encoder_service.encoder",
    "MediaError": "encoder_service.errors",
    "MediaLimitExceeded": "encoder_service.errors",
    "MediaLimits": "encoder_service.media",
    "VideoClip": "encoder_service.media",
    "TOWERS": "encoder_service.registry",
    "load_tower": "encoder_service.registry",
    "Modality": "protos.modality",
    "Tower": "encoder_service.towers",
    "TowerInput": "encoder_service.towers",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy so that `meshserve --help` and the chat client do not import torch.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'encoder_service' has no attribute {name!r}")
