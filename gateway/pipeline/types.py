"""The gateway's domain objects: what a request holds and what a stream yields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protos.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class MediaInput:
    """One image, video or audio item of a prompt, in exactly one of its forms.

    Args:
        data: the raw file bytes.
        handle: a PutMedia handle.
        embeddings: precomputed embeddings [num_tokens, hidden] (the seed's "E" inputs).
        decoded: an already decoded item from the offline API (PIL image, frames
            [T, H, W, 3], (waveform, sampling_rate)).
    """

    modality: str
    data: bytes | None = None
    handle: str | None = None
    embeddings: Any = None
    decoded: Any = None
    grid_thw: tuple[int, int, int] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_embeddings(self) -> bool:
        return self.embeddings is not None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A raw prompt (`prompt`) or a conversation (`messages`), plus its media in order."""

    request_id: str
    sampling_params: SamplingParams
    prompt: str | None = None
    prompt_token_ids: Sequence[int] | None = None  # instead of `prompt`; text-only
    messages: Sequence[Mapping[str, Any]] | None = None
    media: Sequence[MediaInput] = ()
    add_generation_prompt: bool = True
    # to the chat template, e.g. {"continue_final_message": True, "enable_thinking": False}
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    timeout: float | None = None  # seconds left of the client's deadline
    # vLLM's per-request mm_processor_kwargs: the HF processor's arguments for this request's
    # media files (e.g. {"max_pixels": 50176}), on top of --mm-processor-kwargs
    mm_processor_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int


@dataclass(frozen=True, slots=True)
class StageTimings:
    """Milliseconds spent in each stage of one request."""

    validate_ms: float = 0.0
    encode_ms: float = 0.0
    prompt_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One streamed piece of output; the last one has finish_reason, usage and timings."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[Any, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: StageTimings | None = None
    media_cache_hits: tuple[bool, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()  # the last chunk: the prompt the LM ran, media spliced
