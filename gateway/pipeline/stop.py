"""Stop strings on a stream of text deltas.

Generation ends at the first occurrence of any stop string; the output is cut before it (or
after it with `include_stop_str_in_output`). A stop string can span deltas, so text that might
be the beginning of one is held back until the next delta settles it, and only that text: a
tail that cannot start any stop string is emitted at once.

The result does not depend on how the text is split into deltas: it is what one search over
the whole text gives. The earliest stop string wins; at the same position the shorter one
(it is complete first). While an earlier, still incomplete candidate is pending, a later
complete match waits for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from protos.errors import InvalidRequest


class StopResult(NamedTuple):
    """Text that is safe to emit now, and whether a stop string was hit."""

    text: str
    stopped: bool


class StopMatch(NamedTuple):
    index: int  # where the stop string starts in the buffer
    stop: str


class StopChecker:
    """Cuts a stream of text deltas at the first stop string.

    Args:
        stop: the stop strings; empty strings are refused.
        include_stop_str_in_output: keep the stop string at the end of the output.
    """

    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        if isinstance(stop, str):
            stop = [stop]
        if any(not s for s in stop):
            raise InvalidRequest("Stop strings must not be empty")
        self._stops = tuple(dict.fromkeys(stop))
        self._include_stop = include_stop_str_in_output
        self._buffer = ""  # NOTE: every stop occurrence that matters starts inside the buffer
        self.matched_stop: str | None = None

    @property
    def is_stopped(self) -> bool:
        return self.matched_stop is not None

    def process(self, delta: str) -> StopResult:
        """Add a text delta; return what is safe to emit and whether generation must stop."""
        if self.is_stopped:
            return StopResult("", True)
        self._buffer += delta
        match = _earliest_match(self._buffer, self._stops)
        pending = _earliest_partial(self._buffer, self._stops)
        if match is not None and match.index <= pending:
            return StopResult(self._stop_at(match), True)
        safe_end = pending if match is None else min(pending, match.index)
        text, self._buffer = self._buffer[:safe_end], self._buffer[safe_end:]
        return StopResult(text, False)

    def flush(self) -> str:
        """End of the stream: nothing more can complete a stop string; return the rest."""
        if self.is_stopped:
            return ""
        match = _earliest_match(self._buffer, self._stops)
        if match is not None:
            return self._stop_at(match)
        text, self._buffer = self._buffer, ""
        return text

    def _stop_at(self, match: StopMatch) -> str:
        end = match.index + (len(match.stop) if self._include_stop else 0)
        text, self._buffer = self._buffer[:end], ""
        self.matched_stop = match.stop
        return text


def _earliest_match(text: str, stops: tuple[str, ...]) -> StopMatch | None:
    """The first complete stop string in `text`; at the same index, the shortest."""
    found = [StopMatch(text.find(s), s) for s in stops if s in text]
    return min(found, key=lambda m: (m.index, len(m.stop)), default=None)


def _earliest_partial(text: str, stops: tuple[str, ...]) -> int:
    """Where the earliest tail of `text` that is a proper prefix of a stop string begins;
    len(text) when no tail could grow into a stop string."""
    longest = max((len(s) for s in stops), default=1)
    for start in range(max(0, len(text) - longest + 1), len(text)):
        tail = text[start:]
        if any(len(tail) < len(s) and s.startswith(tail) for s in stops):
            return start
    return len(text)
