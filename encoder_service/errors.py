"""Errors about one media item of an Encode call: each names the item and the reason."""

from __future__ import annotations

from protos.errors import InvalidRequest, LimitExceeded


class MediaError(InvalidRequest):
    """A media item that cannot be used (INVALID_ARGUMENT).

    The message reads "<modality> <index>: <reason>", e.g.
    "image 1: not a decodable image (cannot identify image file)".
    """

    def __init__(self, modality: str, index: int, reason: str) -> None:
        super().__init__(f"{modality} {index}: {reason}")
        self.modality = modality
        self.index = index
        self.reason = reason

    def __reduce__(self) -> tuple:  # keep pickling (multiprocessing, logging) working
        return (type(self), (self.modality, self.index, self.reason))


class MediaLimitExceeded(MediaError, LimitExceeded):
    """A media item over a size limit: bytes, pixels, frames or seconds (INVALID_ARGUMENT)."""
