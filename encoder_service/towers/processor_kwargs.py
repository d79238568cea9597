"""`--mm-processor-kwargs` (the seed's option): checked against the HF processors a tower runs.

Keys are the HF processors' own call arguments (`do_pan_and_scan` for Gemma 3, `max_pixels`
for Qwen2-VL, ...). A key none of the tower's processors takes is refused at start-up with the
keys it does take, instead of being dropped or failing on the first request.

A request's own mm_processor_kwargs are also checked by value: the sizes and counts that decide
how large the processed item gets may not exceed the encoder's media limits (a request asking
Qwen2-VL for min_pixels=4_000_000 would otherwise turn a thumbnail into thousands of tokens).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from encoder_service.media import MediaLimits
from protos.errors import InvalidRequest

_MODALITY_KWARGS = ("images_kwargs", "videos_kwargs", "audio_kwargs")


def accepted_kwargs(processor: Any) -> frozenset[str]:
    """The call arguments an HF image/video processor, feature extractor or processor takes."""
    names: set[str] = set()
    valid = getattr(processor, "valid_kwargs", None)  # image and video processors
    if valid is not None:
        names |= _typed_dict_keys(valid)
    combined = getattr(processor, "valid_processor_kwargs", None)  # ProcessorMixin
    if combined is not None:
        hints = _hints(combined)
        for field in _MODALITY_KWARGS:
            if field in hints:
                names |= _typed_dict_keys(hints[field])
    for child in ("image_processor", "video_processor", "feature_extractor", "audio_processor"):
        if (sub := getattr(processor, child, None)) is not None and sub is not processor:
            names |= accepted_kwargs(sub)
    return frozenset(names)


def check_processor_kwargs(
    kwargs: Mapping[str, Any] | None,
    processors: Iterable[Any],
    architecture: str,
    source: str = "--mm-processor-kwargs",
) -> dict[str, Any]:
    """`kwargs` as a dict; InvalidRequest naming `source` (the flag, or a request's field),
    the unknown keys and the accepted ones."""
    kwargs = dict(kwargs or {})
    if not kwargs:
        return kwargs
    known: set[str] = set()
    for processor in processors:
        known |= accepted_kwargs(processor)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InvalidRequest(
            f"{source}: the processor of {architecture} takes no "
            f"{', '.join(map(repr, unknown))}; it takes {', '.join(sorted(known)) or 'none'}"
        )
    return kwargs


def check_request_values(
    kwargs: Mapping[str, Any], limits: MediaLimits, *, size_is_pixel_count: bool = False
) -> None:
    """InvalidRequest when a size or count in a request's kwargs is not a positive integer or
    would let the processed item exceed `limits`. `size_is_pixel_count`: the processor's
    size.shortest_edge / longest_edge are pixel counts (Qwen2-VL), not edge lengths."""
    for key, value in kwargs.items():
        if key in _PIXEL_COUNT_KEYS:
            _check_count(key, value, limits.max_pixels, "pixels (the encoder's max_pixels)")
        elif key in _FRAME_COUNT_KEYS:
            _check_count(key, value, limits.max_frames, "frames (the encoder's max_frames)")
        elif key in _SIZE_KEYS:
            _check_size(key, value, limits.max_pixels, size_is_pixel_count)


_PIXEL_COUNT_KEYS = ("min_pixels", "max_pixels")  # the resized image's width * height
_FRAME_COUNT_KEYS = ("num_frames", "max_frames")
_SIZE_KEYS = ("size", "crop_size")


def _check_count(key: str, value: Any, limit: int, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequest(
            f"mm_processor_kwargs: {key} must be a positive integer, got {value!r}"
        )
    if value > limit:
        raise InvalidRequest(
            f"mm_processor_kwargs: {key}={value} is over the limit of {limit} {unit}"
        )


def _check_size(key: str, value: Any, max_pixels: int, size_is_pixel_count: bool) -> None:
    """A size dict: {height, width} or {shortest_edge, longest_edge} of positive integers."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"mm_processor_kwargs: {key} must be a dict, got {value!r}")
    for name, number in value.items():
        _check_count(f"{key}.{name}", number, max_pixels, "pixels (the encoder's max_pixels)")
    height, width = value.get("height"), value.get("width")
    if height is not None and width is not None and height * width > max_pixels:
        raise InvalidRequest(
            f"mm_processor_kwargs: {key} {height}x{width} is over the limit of {max_pixels} "
            "pixels (the encoder's max_pixels)"
        )
    for name in ("shortest_edge", "longest_edge"):
        edge = value.get(name)
        pixels = edge if size_is_pixel_count or edge is None else edge * edge
        if pixels is not None and pixels > max_pixels:
            raise InvalidRequest(
                f"mm_processor_kwargs: {key}.{name}={edge} is over the limit of {max_pixels} "
                "pixels (the encoder's max_pixels)"
            )


def canonical(kwargs: Mapping[str, Any]) -> str:
    """A stable text of the kwargs: part of the encoder's cache identity."""
    return json.dumps(dict(kwargs), sort_keys=True, separators=(",", ":"), default=repr)


def _typed_dict_keys(cls: Any) -> set[str]:
    return set(_hints(cls))


def _hints(cls: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable forward references: fall back to names
        return dict(getattr(cls, "__annotations__", {}))
