"""What crosses the gateway <-> LM boundary, in process or over gRPC (see `lm_codec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protos.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class MultiModalSpan:
    """Placeholder positions of one media item in the prompt.

    Args:
        offset: first prompt position the item's embeddings replace.
        length: number of positions.
        content_hash: the encoder's hash of the item; keys the prefix cache.
        embeddings: [length, hidden] tensor, or None while it lives elsewhere.
    """

    offset: int
    length: int
    content_hash: str
    embeddings: Any = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 1:
            raise InvalidRequest(
                f"multimodal span needs offset >= 0 and length >= 1, "
                f"got offset={self.offset} length={self.length}"
            )

    @property
    def end(self) -> int:
        return self.offset + self.length


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
class PoolingInput:
    """One input of a Pool call.

    Args:
        token_ids: the prompt, special tokens included.
        token_type_ids: BERT-style segment ids of a (text_1, text_2) pair; same length, or None.
    """

    token_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None = None
