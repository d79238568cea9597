"""What crosses the gateway <-> LM boundary, in process or over gRPC (see `lm_codec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protos.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class MultiModalSpan:
    """Placeholder positions of one media item in the prompt.

    Args:
        offset: first prompt position of the item.
        length: number of positions, from the first to the last that takes an embedding.
        content_hash: the encoder's hash of the item; keys the prefix cache.
        embeddings: [num_embeds, hidden] tensor, or None while it lives elsewhere.
        is_embed: per position, whether it takes the next embedding row; None = all do.
            NOTE: an item's embeddings need not be contiguous: row/col tags, [IMG_BREAK] and
            timestamps between them are ordinary prompt tokens (vLLM's PlaceholderRange).
    """

    offset: int
    length: int
    content_hash: str
    embeddings: Any = field(default=None, compare=False, hash=False, repr=False)
    is_embed: tuple[bool, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 1:
            raise InvalidRequest(
                f"multimodal span needs offset >= 0 and length >= 1, "
                f"got offset={self.offset} length={self.length}"
            )
        if self.is_embed is not None and len(self.is_embed) != self.length:
            raise InvalidRequest(
                f"multimodal span of {self.length} positions has an is_embed mask of "
                f"{len(self.is_embed)}"
            )

    @property
    def end(self) -> int:
        return self.offset + self.length

    def check(self, index: int, num_prompt: int, hidden: int) -> None:
        """Refuses, naming span `index`, a span outside the prompt or embeddings that do not
        fit its embed positions."""
        if self.offset + self.length > num_prompt:
            raise InvalidRequest(
                f"media span {index} covers tokens [{self.offset}, {self.end}) "
                f"outside the prompt of {num_prompt} tokens"
            )
        emb = self.embeddings
        if emb is None or emb.dim() != 2 or tuple(emb.shape) != (self.num_embeds, hidden):
            shape = None if emb is None else list(emb.shape)
            raise InvalidRequest(
                f"media span {index} needs embeddings of shape [{self.num_embeds}, {hidden}], "
                f"got {shape}"
            )

    @property
    def num_embeds(self) -> int:
        return self.length if self.is_embed is None else sum(self.is_embed)

    def embed_rows(self, start: int, end: int) -> tuple[list[int], slice]:
        """Prompt positions in [start, end) that take embeddings, and the embedding rows
        they take (a contiguous slice: rows are consumed in position order)."""
        lo, hi = max(start, self.offset), min(end, self.end)
        if lo >= hi:
            return [], slice(0, 0)
        if self.is_embed is None:
            return list(range(lo, hi)), slice(lo - self.offset, hi - self.offset)
        first = sum(self.is_embed[: lo - self.offset])
        positions = [p for p in range(lo, hi) if self.is_embed[p - self.offset]]
        return positions, slice(first, first + len(positions))


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
        mm_spans: media embeddings that replace placeholder rows (the `T / I`, `T + I` rows of
            the seed's multimodal embedding table), as in a Generate request.
        mrope_positions: [3, num_tokens] int64 M-RoPE positions (Qwen2-VL); None otherwise.
    """

    token_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None = None
    mm_spans: tuple[MultiModalSpan, ...] = ()
    mrope_positions: Any = field(default=None, compare=False, hash=False, repr=False)
