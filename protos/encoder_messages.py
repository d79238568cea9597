"""What crosses the gateway <-> encoder boundary, in process or over gRPC (see `encoder_codec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


@dataclass(frozen=True, slots=True, eq=False)
class MediaItem:
    """One image, video or audio clip to encode: exactly one of `data`, `embeddings`, `decoded`.

    Args:
        data: the file's bytes (PNG, JPEG, MP4, WAV, ...).
        embeddings: precomputed [num_tokens, hidden] embeddings, passed through after checks.
        decoded: an already decoded object: PIL image / [H, W, 3] uint8 array (image),
            [T, H, W, 3] uint8 array or list of PIL frames (video), (waveform, sampling_rate)
            (audio).
        options: processing options; videos take "fps" or "num_frames".
        metadata: facts about the item: "fps" of decoded video frames; "grid_thw" (and for
            Qwen2.5-VL videos "second_per_grid_t") of precomputed Qwen2-VL embeddings.
        processor_kwargs: the request's own mm_processor_kwargs (e.g. {"max_pixels": 50176}),
            on top of the encoder's --mm-processor-kwargs; part of the content hash.
    """

    data: bytes | None = None
    embeddings: torch.Tensor | None = None
    decoded: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)


# The placeholder of an item whose processor puts it before the prompt, not in the text
# (BLIP-2): its replacement tokens come first, before the tokenized prompt and its BOS.
BEFORE_PROMPT = ""


class EncodeResult(NamedTuple):
    """One encoded item.

    Args:
        embeddings: [num_tokens, hidden], read-only (shared with the cache); [0, hidden] when
            the encoder answers token ids.
        metadata: e.g. {"grid_thw": (t, h, w)} (Qwen2-VL); generic towers: "placeholder",
            "replacement", "embed_token_id".
        token_ids: discrete-token encoders (Chameleon's VQ codes): the ids that take the embed
            positions of the prompt, one per position; () otherwise.
    """

    embeddings: torch.Tensor
    num_tokens: int
    content_hash: str
    cache_hit: bool
    metadata: Mapping[str, Any]
    token_ids: tuple[int, ...] = ()


class CacheStats(NamedTuple):
    hits: int
    misses: int
    evictions: int
    num_entries: int
    num_bytes: int
    max_bytes: int


class EncoderInfo(NamedTuple):
    model_id: str
    architecture: str
    modality: str
    hidden_size: int
    dtype: str
    device: str
    cache: CacheStats
    num_requests: int  # encode calls
    num_items: int  # items received
    num_encoded: int  # items actually run through the tower
    num_tower_calls: int  # tower forward calls (batches)
