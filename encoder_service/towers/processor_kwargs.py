"""`--mm-processor-kwargs` (the seed's option): checked against the HF processors a tower runs.

Keys are the HF processors' own call arguments (`do_pan_and_scan` for Gemma 3, `max_pixels`
for Qwen2-VL, ...). A key none of the tower's processors takes is refused at start-up with the
keys it does take, instead of being dropped or failing on the first request.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from typing import Any

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
