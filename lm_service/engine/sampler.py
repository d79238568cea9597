"""Batched sampling: greedy, temperature, top-k, top-p, min-p, seeds, penalties, logprobs.

One row per request that samples this step. The order of operations on each row:
  1. logprobs are taken from the RAW logits (log_softmax before any processing), like vLLM's
     default `logprobs_mode="raw_logprobs"`: what the model believes, not what was sampled from;
  2. min_tokens forbids EOS and stop token ids, begin_suppress_token_ids the first token's
     choices (HF's SuppressTokensAtBeginLogitsProcessor), allowed_token_ids all others;
     penalties (repetition, then frequency and presence);
  3. greedy rows: argmax;
  4. random rows: temperature -> top-k -> top-p -> min-p -> an exponential race
     (argmax of probs / q, q ~ Exp(1)), which samples from probs without a host sync; a
     seeded row draws its q from its own torch.Generator, kept on the request across steps,
     so its tokens do not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from kernels.greedy import first_argmax
from lm_service.engine.counters import EngineCounters
from lm_service.engine.request import LogprobEntry, Request
from protos.sampling_params import SamplingParams


class SamplerOutput(NamedTuple):
    token_ids: torch.Tensor  # [B] int64
    logprobs: list[LogprobEntry | None] | None  # per row; None when no row asked for logprobs


@dataclass(frozen=True, slots=True)
class Penalties:
    """Penalty parameters of a batch and the token statistics they act on.

    Args:
        repetition: [B] float32, 1.0 = off.
        presence: [B] float32, 0.0 = off.
        frequency: [B] float32, 0.0 = off.
        output_counts: [B, V] float32, occurrences of each token in the output so far.
        seen_mask: [B, V] bool, token present in the prompt or the output.
    """

    repetition: torch.Tensor
    presence: torch.Tensor
    frequency: torch.Tensor
    output_counts: torch.Tensor
    seen_mask: torch.Tensor


@dataclass(frozen=True, slots=True)
class SamplingMetadata:
    """Per-row sampling parameters of one step, as tensors on the logits' device.

    Build it each step with `from_requests`, over the requests that sample, in logits row order.

    Args:
        temperature: [B] float32; 1.0 on greedy rows.
        is_greedy: [B] bool.
        top_k: [B] int64 in [1, V], or None when no random row uses top-k.
        top_p: [B] float32, or None when no random row uses top-p.
        min_p: [B] float32, or None when no random row uses min-p.
        generators: row -> the seeded generator of that row's request.
        penalties: None when no row has a penalty.
        banned_mask: (rows [N], token ids [N]) to forbid, or None.
        allowed_mask: [B, V] bool, True where a row may sample; None when no row restricts.
        num_logprobs: per row, SamplingParams.logprobs.
    """

    temperature: torch.Tensor
    is_greedy: torch.Tensor
    all_greedy: bool
    top_k: torch.Tensor | None
    top_p: torch.Tensor | None
    min_p: torch.Tensor | None
    generators: dict[int, torch.Generator]
    penalties: Penalties | None
    banned_mask: tuple[torch.Tensor, torch.Tensor] | None
    allowed_mask: torch.Tensor | None
    num_logprobs: tuple[int | None, ...]
    vocab_size: int

    @property
    def wants_logprobs(self) -> bool:
        return any(n is not None for n in self.num_logprobs)

    @property
    def is_plain_greedy(self) -> bool:
        return (
            self.all_greedy
            and self.penalties is None
            and self.banned_mask is None
            and self.allowed_mask is None
        )

    @classmethod
    def from_requests(
        cls, requests: Sequence[Request], vocab_size: int, device: torch.device | str
    ) -> SamplingMetadata:
        """Metadata for one step; seeded requests get (or keep) their generator."""
        params = [request.sampling_params for request in requests]
        greedy = [p.is_greedy for p in params]
        random_params = [p for p in params if not p.is_greedy]
        top_k = [min(p.top_k, vocab_size) if p.top_k > 0 else vocab_size for p in params]
        uses_top_k = any(0 < p.top_k < vocab_size for p in random_params)
        uses_top_p = any(p.top_p < 1 for p in random_params)
        uses_min_p = any(p.min_p > 0 for p in random_params)
        temperature = [1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)]
        return cls(
            temperature=_floats(temperature, device),
            is_greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            all_greedy=all(greedy),
            top_k=_ints(top_k, device) if uses_top_k else None,
            top_p=_floats([p.top_p for p in params], device) if uses_top_p else None,
            min_p=_floats([p.min_p for p in params], device) if uses_min_p else None,
            generators=_generators(requests, device),
            penalties=_penalties(requests, vocab_size, device),
            banned_mask=_banned_mask(requests, vocab_size, device),
            allowed_mask=_allowed_mask(params, vocab_size, device),
            num_logprobs=tuple(p.logprobs for p in params),
            vocab_size=vocab_size,
        )


def _floats(values: Sequence[float], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _ints(values: Sequence[int], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device)


def _generators(
    requests: Sequence[Request], device: torch.device | str
) -> dict[int, torch.Generator]:
    generators: dict[int, torch.Generator] = {}
    for row, request in enumerate(requests):
        params = request.sampling_params
        if params.seed is None or params.is_greedy:
            continue
        if request.generator is None:  # NOTE: created once, then advanced step after step
            request.generator = torch.Generator(device=device).manual_seed(params.seed)
        generators[row] = request.generator
    return generators


def _token_counts(
    token_lists: Sequence[Sequence[int]], vocab_size: int, device: torch.device | str
) -> torch.Tensor:
    """[B, V] float32: how often each token id occurs in each row's list (out-of-vocab ignored)."""
    width = max(1, max(len(tokens) for tokens in token_lists))
    ids = torch.full((len(token_lists), width), vocab_size, dtype=torch.int64)  # pad = column V
    for row, tokens in enumerate(token_lists):
        if tokens:
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    ids[(ids < 0) | (ids >= vocab_size)] = vocab_size
    ids = ids.to(device)
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab_size]


def _penalties(
    requests: Sequence[Request], vocab_size: int, device: torch.device | str
) -> Penalties | None:
    params = [request.sampling_params for request in requests]
    if not any(p.has_penalties for p in params):
        return None
    output_counts = _token_counts([r.output_token_ids for r in requests], vocab_size, device)
    seen_mask = output_counts > 0
    if any(p.repetition_penalty != 1.0 for p in params):
        prompts = [r.prompt_token_ids for r in requests]
        seen_mask |= _token_counts(prompts, vocab_size, device) > 0
    return Penalties(
        repetition=_floats([p.repetition_penalty for p in params], device),
        presence=_floats([p.presence_penalty for p in params], device),
        frequency=_floats([p.frequency_penalty for p in params], device),
        output_counts=output_counts,
        seen_mask=seen_mask,
    )


def _banned_mask(
    requests: Sequence[Request], vocab_size: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (row, token id) pairs no row may sample this step: EOS and stop ids before
    min_tokens, begin_suppress_token_ids at the first output token."""
    rows: list[int] = []
    token_ids: list[int] = []
    for row, request in enumerate(requests):
        for token_id in sorted(t for t in _banned_ids(request) if 0 <= t < vocab_size):
            rows.append(row)
            token_ids.append(token_id)
    if not rows:
        return None
    return _ints(rows, device), _ints(token_ids, device)


def _allowed_mask(
    params: Sequence[SamplingParams], vocab_size: int, device: torch.device | str
) -> torch.Tensor | None:
    """[B, V] bool: True where a row may sample (rows without allowed_token_ids: all)."""
    if not any(p.allowed_token_ids for p in params):
        return None
    mask = torch.ones(len(params), vocab_size, dtype=torch.bool)
    for row, p in enumerate(params):
        if p.allowed_token_ids:
            mask[row] = False
            mask[row, [t for t in p.allowed_token_ids if t < vocab_size]] = True
    return mask.to(device)


def _banned_ids(request: Request) -> set[int]:
    params = request.sampling_params
    banned = set(params.begin_suppress_token_ids) if request.num_output_tokens == 0 else set()
    if request.num_output_tokens < params.min_tokens:
        banned |= set(params.stop_token_ids)
        if request.eos_token_id is not None and not params.ignore_eos:
            banned.add(request.eos_token_id)
    return banned


def apply_penalties(logits: torch.Tensor, penalties: Penalties) -> torch.Tensor:
    """HF / vLLM semantics, out of place. logits: [B, V] float32.

    Repetition (prompt + output tokens): positive logits divided, negative ones multiplied.
    Frequency and presence (output tokens only): subtract penalty x count, penalty x (count > 0).
    """
    repetition = penalties.repetition.unsqueeze(1)  # [B, 1]
    repeated = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(penalties.seen_mask, repeated, logits)
    logits = logits - penalties.frequency.unsqueeze(1) * penalties.output_counts
    return logits - penalties.presence.unsqueeze(1) * (penalties.output_counts > 0)


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Set to -inf what top-k [B] and top-p [B] exclude. logits: [B, V]; out of place.

    NOTE: ties with the k-th logit are kept; top-p keeps the smallest most-likely set whose
    probability reaches p, and always the most likely token.
    """
    if top_k is None and top_p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1)  # ascending, [B, V]
    if top_k is not None:
        kth = sorted_logits.gather(1, (logits.shape[1] - top_k).unsqueeze(1))  # [B, 1]
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    if top_p is not None:
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p).unsqueeze(1)
        drop[:, -1] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero the probs [B, V] below min_p [B] times each row's largest; out of place."""
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)  # [B, 1]
    return probs.masked_fill(probs < threshold, 0.0)


class Sampler:
    """Picks one token per row of logits.

    Args:
        counters: where its copies to the host are counted (a private one when None).

    Args (of __call__):
        logits: [B, V] float32, V = metadata.vocab_size; not modified.
        metadata: the rows' parameters, from SamplingMetadata.from_requests.
    """

    def __init__(self, counters: EngineCounters | None = None) -> None:
        self.counters = counters if counters is not None else EngineCounters()

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        assert logits.shape[1] == metadata.vocab_size, (logits.shape, metadata.vocab_size)
        logits = logits.float()
        raw_logprobs = logits.log_softmax(dim=-1) if metadata.wants_logprobs else None
        if metadata.is_plain_greedy:
            token_ids = first_argmax(logits)
        else:
            token_ids = self._sample(self._constrain(logits, metadata), metadata)
        if raw_logprobs is None:
            return SamplerOutput(token_ids, None)
        entries = logprob_entries(raw_logprobs, token_ids, metadata.num_logprobs, self.counters)
        return SamplerOutput(token_ids, entries)

    @staticmethod
    def _constrain(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        if metadata.banned_mask is not None:
            logits = logits.clone()
            logits[metadata.banned_mask] = float("-inf")
        if metadata.allowed_mask is not None:
            logits = logits.masked_fill(~metadata.allowed_mask, float("-inf"))
        if metadata.penalties is not None:
            logits = apply_penalties(logits, metadata.penalties)
        return logits

    @staticmethod
    def _sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        greedy_ids = first_argmax(logits)  # [B]
        if metadata.all_greedy:
            return greedy_ids
        logits = logits / metadata.temperature.unsqueeze(1)
        logits = apply_top_k_top_p(logits, metadata.top_k, metadata.top_p)
        probs = logits.softmax(dim=-1)  # [B, V]
        if metadata.min_p is not None:
            probs = apply_min_p(probs, metadata.min_p)
        random_ids = exponential_race(probs, metadata.generators)
        return torch.where(metadata.is_greedy, greedy_ids, random_ids)


def exponential_race(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Sample one id per row of probs [B, V] (need not be normalized): argmax(probs / q).

    q ~ Exp(1) i.i.d.; a row in `generators` draws its q from that generator only.
    """
    q = torch.empty_like(probs).exponential_()
    for row, generator in generators.items():
        q[row].exponential_(generator=generator)
    return first_argmax(probs.div(q))


def logprob_entries(
    logprobs: torch.Tensor,
    token_ids: torch.Tensor,
    num_logprobs: Sequence[int | None],
    counters: EngineCounters | None = None,
) -> list[LogprobEntry | None]:
    """Per row: the sampled token's logprob and rank, and the top-n. logprobs: [B, V]."""
    to_host = (counters or EngineCounters()).to_host
    max_n = min(max(n or 0 for n in num_logprobs), logprobs.shape[1])
    top_logprobs, top_ids = logprobs.topk(max_n, dim=-1)  # [B, max_n], most likely first
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [B, 1]
    ranks = (logprobs > chosen).sum(dim=-1, keepdim=True) + 1  # [B, 1]
    # NOTE: two host transfers for the whole batch, one per dtype
    floats = to_host(torch.cat([chosen, top_logprobs], dim=1))  # [B, 1 + max_n]
    ints = to_host(torch.cat([token_ids.unsqueeze(1), ranks, top_ids], dim=1))  # [B, 2 + max_n]
    entries: list[LogprobEntry | None] = []
    for row, n in enumerate(num_logprobs):
        if n is None:
            entries.append(None)
            continue
        (logprob, *top), (token_id, rank, *ids) = floats[row], ints[row]
        entries.append(LogprobEntry(token_id, logprob, rank, tuple(ids[:n]), tuple(top[:n])))
    return entries
