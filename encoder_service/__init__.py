"""encoder_service: media decoding under limits, HF preprocessing, encoder towers, an embedding
cache and micro-batching. The core imports no grpc; `server.py` is the thin servicer.

    enc = Encoder.from_pretrained(path, modality="image")
    out = enc.encode([MediaItem(data=png_bytes)])
    out[0].embeddings  # [num_tokens, hidden]
"""

from encoder_service.batcher import MicroBatcher
from encoder_service.cache import CachedEncoding, CacheStats, EmbeddingCache, content_hash
from encoder_service.encoder import Encoder, EncodeResult, EncoderInfo, MediaItem
from encoder_service.errors import MediaError, MediaLimitExceeded
from encoder_service.media import MediaLimits, VideoClip
from encoder_service.registry import TOWERS, load_tower
from encoder_service.towers import Modality, Tower, TowerInput

__all__ = [
    "TOWERS",
    "CacheStats",
    "CachedEncoding",
    "EmbeddingCache",
    "EncodeResult",
    "Encoder",
    "EncoderInfo",
    "MediaError",
    "MediaItem",
    "MediaLimitExceeded",
    "MediaLimits",
    "MicroBatcher",
    "Modality",
    "Tower",
    "TowerInput",
    "VideoClip",
    "content_hash",
    "load_tower",
]
