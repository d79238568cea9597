"""A request inside the LM engine: a handful of counts catching up with each other.

`num_computed_tokens` (tokens whose KV is in the cache) catches up to `num_tokens` (prompt +
output). A step schedules `num_tokens - num_computed_tokens` tokens, or fewer (a prefill chunk);
the step that catches up samples one more token.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from protos.errors import InvalidRequest
from protos.lm_messages import MultiModalSpan
from protos.sampling_params import SamplingParams


class FinishReason(enum.StrEnum):
    """Why a request ended; the values are the OpenAI API's strings."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)

    @staticmethod
    def finished_with(reason: FinishReason) -> RequestStatus:
        return _FINISHED_STATUSES[reason]


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
}
_FINISHED_STATUSES = {reason: status for status, reason in _FINISH_REASONS.items()}


class LogprobEntry(NamedTuple):
    """Logprobs of one sampled token, computed from the model's raw logits.

    `rank` is 1 for the most likely token. `top_token_ids` / `top_logprobs` hold the n most
    likely tokens, most likely first (n = SamplingParams.logprobs; empty when n == 0).
    """

    token_id: int
    logprob: float
    rank: int
    top_token_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


@dataclass(eq=False, slots=True)
class Request:
    """One generation request in the engine; the scheduler and block pool mutate its state.

    Args:
        prompt_token_ids: the prompt, placeholders for media included.
        eos_token_id: ends the request unless `sampling_params.ignore_eos`.
        mm_spans: media placeholders, sorted by offset and non-overlapping.
        mrope_positions: [3, num_prompt_tokens] positions for M-RoPE models (Qwen2-VL).
        adapter_id: the adapter (LoRA) the request runs with; part of the prefix-cache key.
        bidirectional_ranges: prompt position ranges `[start, end)` whose tokens attend each
            other both ways (Gemma 3's images, PaliGemma's prefix); sorted and disjoint.
            NOTE: a prefill chunk never ends inside one (the scheduler's rule).
        encoder_states: [num_encoder_tokens, encoder_hidden] what the decoder's cross-attention
            reads (Whisper's audio encoder output); None for decoder-only requests. Its K/V
            are computed at the request's first step into `cross_block_ids`.
        cross_windows: which encoder positions its tokens attend, from which position on
            (`kernels.cross_attention_mask`; Mllama's images); empty: all of them.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams = field(default_factory=SamplingParams)
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    mm_spans: tuple[MultiModalSpan, ...] = ()
    mrope_positions: Any = field(default=None, repr=False)
    adapter_id: str | None = None
    bidirectional_ranges: tuple[tuple[int, int], ...] = ()
    encoder_states: Any = field(default=None, repr=False)
    cross_windows: tuple[Any, ...] = ()
    # --- state, owned by the engine ---
    output_token_ids: list[int] = field(default_factory=list, init=False)
    output_logprobs: list[LogprobEntry | None] = field(default_factory=list, init=False)
    num_computed_tokens: int = field(default=0, init=False)
    num_cached_tokens: int = field(default=0, init=False)  # prompt tokens hit in prefix cache
    num_preemptions: int = field(default=0, init=False)
    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    block_ids: list[int] = field(default_factory=list, init=False)
    block_hashes: list[bytes] = field(default_factory=list, init=False)  # one per full block
    state_slot: int | None = field(default=None, init=False)  # SSM / hybrid models only
    cross_block_ids: list[int] = field(default_factory=list, init=False)  # encoder K/V blocks
    finish_reason: FinishReason | None = field(default=None, init=False)
    all_token_ids: list[int] = field(default_factory=list, init=False, repr=False)
    generator: Any = field(default=None, init=False, repr=False)  # seeded torch.Generator

    def __post_init__(self) -> None:
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.mm_spans = tuple(self.mm_spans)
        if not self.prompt_token_ids:
            raise InvalidRequest("the prompt must contain at least one token")
        self._check_mm_spans()
        self._check_bidirectional_ranges()
        self.all_token_ids = list(self.prompt_token_ids)

    def _check_mm_spans(self) -> None:
        end = 0
        for span in self.mm_spans:
            if span.offset < end or span.end > self.num_prompt_tokens:
                raise InvalidRequest(
                    f"multimodal span [{span.offset}, {span.end}) overlaps another span or "
                    f"lies outside the prompt of {self.num_prompt_tokens} tokens"
                )
            end = span.end

    def _check_bidirectional_ranges(self) -> None:
        self.bidirectional_ranges = tuple((int(s), int(e)) for s, e in self.bidirectional_ranges)
        end = 0
        for start, stop in self.bidirectional_ranges:
            if start < end or stop <= start or stop > self.num_prompt_tokens:
                raise InvalidRequest(
                    f"bidirectional range [{start}, {stop}) overlaps another, is empty or lies "
                    f"outside the prompt of {self.num_prompt_tokens} tokens"
                )
            end = stop

    def chunk_end(self, start: int, end: int) -> int:
        """The end of a chunk [start, end) moved so that it does not fall inside a
        bidirectional range: back to the range's start, or, when the chunk starts inside the
        range, out to its end (the caller checks that the budget allows it)."""
        for range_start, range_end in self.bidirectional_ranges:
            if range_start < end < range_end:
                return range_start if range_start > start else range_end
        return end

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_encoder_tokens(self) -> int:
        return 0 if self.encoder_states is None else int(self.encoder_states.shape[0])

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int, logprob_entry: LogprobEntry | None = None) -> None:
        self.output_token_ids.append(token_id)
        self.output_logprobs.append(logprob_entry)
        self.all_token_ids.append(token_id)

    def check_stop(self, max_model_len: int | None = None) -> FinishReason | None:
        """Why the request should end after its latest token, or None to go on.

        NOTE: EOS, stop token ids and max_tokens count only from min_tokens on (min_tokens <=
        max_tokens); max_model_len is a hard limit that always ends the request.
        """
        params = self.sampling_params
        if not self.output_token_ids:
            return None
        if self.num_output_tokens >= params.min_tokens:
            last_token_id = self.output_token_ids[-1]
            if not params.ignore_eos and last_token_id == self.eos_token_id:
                return FinishReason.STOP
            if last_token_id in params.stop_token_ids:
                return FinishReason.STOP
            if params.max_tokens is not None and self.num_output_tokens >= params.max_tokens:
                return FinishReason.LENGTH
        if max_model_len is not None and self.num_tokens >= max_model_len:
            return FinishReason.LENGTH
        return None
