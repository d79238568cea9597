"""What the engine hands back: per-step deltas and whole-request results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StepOutput:
    """New tokens of one request from one engine step."""

    request_id: str
    new_token_ids: tuple[int, ...]
    new_logprobs: tuple[Any, ...]  # one entry per token when logprobs were asked
    finish_reason: str | None  # "stop", "length", "abort" on the last output
    num_prompt_tokens: int
    num_cached_tokens: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """The whole result of one request, as `Engine.generate` returns it."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[Any, ...] | None
    finish_reason: str | None
    num_cached_tokens: int
