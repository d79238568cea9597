"""Per-request sampling parameters, with vLLM's names, defaults and validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from protos.errors import InvalidRequest

_GREEDY_EPSILON = 1e-5
# The most top logprobs a client may ask per token (vLLM's default max_logprobs): every step's
# message carries them for all of a stream's requests, toward the gRPC message limit. Only
# what clients ask is capped: the gateway's own steps (Whisper's language detection) may score
# the whole vocabulary.
MAX_LOGPROBS = 20


def _refuse(message: str) -> NoReturn:
    raise InvalidRequest(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick the next tokens of one request, and when to stop.

    Args:
        max_tokens: most tokens to generate; None = until the context is full.
        min_tokens: tokens to generate before EOS or a stop token id may end the request.
        temperature: 0 means greedy.
        top_k: keep the k most likely tokens; 0 or -1 = off.
        top_p: keep the smallest set of tokens whose probability reaches p; 1 = off.
        min_p: drop tokens less likely than min_p times the most likely one; 0 = off.
        seed: makes this request's random sampling reproducible, whatever its batch-mates.
        repetition_penalty: > 1 discourages tokens seen in the prompt or the output.
        presence_penalty: subtracted once from tokens present in the output.
        frequency_penalty: subtracted per occurrence of a token in the output.
        logprobs: top-n logprobs to return per sampled token (plus the sampled token's own).
        stop_token_ids: token ids that end the request (the token is kept in the output).
        ignore_eos: keep generating past the EOS token.
        stop: stop strings; matched by the gateway's detokenizer, carried here untouched.
        begin_suppress_token_ids: token ids the first generated token may not be (HF's
            generation config `begin_suppress_tokens`, e.g. Whisper's blank and EOS).
        allowed_token_ids: when set, the only tokens that may be sampled (vLLM's name).
    """

    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    begin_suppress_token_ids: tuple[int, ...] = ()
    allowed_token_ids: tuple[int, ...] = ()  # empty: every token

    def __post_init__(self) -> None:
        # Accept lists (and a lone stop string) from callers; store tuples so params stay hashable.
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "begin_suppress_token_ids", tuple(self.begin_suppress_token_ids))
        object.__setattr__(self, "allowed_token_ids", tuple(self.allowed_token_ids))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        self._validate_lengths()
        self._validate_sampling()
        self._validate_penalties()
        self._validate_outputs()

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPSILON or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    # NOTE: each message is formatted only when its check fails: every request builds its
    # params at least once on the gateway, and formatting them all took most of the time
    def _validate_lengths(self) -> None:
        if self.max_tokens is not None:
            if not _is_int(self.max_tokens):
                _refuse(f"max_tokens must be an integer, got {self.max_tokens!r}")
            if self.max_tokens < 1:
                _refuse(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not _is_int(self.min_tokens):
            _refuse(f"min_tokens must be an integer, got {self.min_tokens!r}")
        if self.min_tokens < 0:
            _refuse(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            _refuse(f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")

    def _validate_sampling(self) -> None:
        if not _is_number(self.temperature):
            _refuse(f"temperature must be a number, got {self.temperature!r}")
        if self.temperature < 0:
            _refuse(f"temperature must be >= 0, got {self.temperature}")
        if not _is_int(self.top_k):
            _refuse(f"top_k must be an integer, got {self.top_k!r}")
        if self.top_k < -1:
            _refuse(f"top_k must be -1 or 0 (disabled) or at least 1, got {self.top_k}")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            _refuse(f"top_p must be in (0, 1], got {self.top_p}")
        if not (_is_number(self.min_p) and 0 <= self.min_p <= 1):
            _refuse(f"min_p must be in [0, 1], got {self.min_p}")
        if self.seed is not None:
            if not _is_int(self.seed):
                _refuse(f"seed must be an integer, got {self.seed!r}")
            if not -(2**63) <= self.seed < 2**64:
                _refuse(f"seed must fit in 64 bits (-2**63 <= seed < 2**64), got {self.seed}")

    def _validate_penalties(self) -> None:
        if not (_is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            _refuse(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (_is_number(value) and -2 <= value <= 2):
                _refuse(f"{name} must be in [-2, 2], got {value}")

    def _validate_outputs(self) -> None:
        if self.logprobs is not None and not (_is_int(self.logprobs) and self.logprobs >= 0):
            _refuse(f"logprobs must be a non-negative integer, got {self.logprobs!r}")
        for name in ("stop_token_ids", "begin_suppress_token_ids", "allowed_token_ids"):
            ids = getattr(self, name)
            if ids and not all(_is_int(token_id) and token_id >= 0 for token_id in ids):
                _refuse(f"{name} must be non-negative integers, got {list(ids)}")
        if not all(isinstance(text, str) and text for text in self.stop):
            _refuse(f"stop must be non-empty strings, got {list(self.stop)}")


def per_prompt(
    params: SamplingParams | Sequence[SamplingParams] | None, n: int
) -> list[SamplingParams]:
    """One SamplingParams for every prompt, or a list with one per prompt (vLLM's rule)."""
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * n
    if len(params) != n:
        raise InvalidRequest(f"got {len(params)} sampling params for {n} prompts")
    return list(params)


def check_client_logprobs(logprobs: int | None, name: str = "logprobs") -> None:
    """InvalidRequest for a client asking more than MAX_LOGPROBS top logprobs per token."""
    if logprobs is not None and _is_int(logprobs) and not 0 <= logprobs <= MAX_LOGPROBS:
        _refuse(f"{name} must be between 0 and {MAX_LOGPROBS}, got {logprobs}")
