"""The scheduler: which requests run this step, and how many tokens each.

No prefill or decode phase (vLLM v1): each request has `num_computed_tokens` catching up to
`num_tokens`, under one token budget per step (`max_num_batched_tokens`). Running requests go
first (a decode needs 1 token, an unfinished prefill the rest of its prompt, capped by the
budget: chunked prefill), then waiting ones in arrival order. When KV blocks run out, the
newest running request is preempted: its blocks are freed and it is recomputed later, output
tokens included. Models with Mamba layers also need one recurrent state slot per running
request (`StatePool`): a waiting request is admitted only when a slot is free, and gives it
back on finish, abort or preemption; prefix caching is off for them (a cached block cannot
restore a recurrent state). Encoder-decoder models likewise need cross-attention blocks for a
request's encoder states (`EncoderCachePool`), held from admission to finish, abort or
preemption; prefix caching is off for them too (a decoder block depends on the encoder states,
which its token hash does not see). Pure CPU; no torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lm_service.engine.block_pool import BlockPool, ComputedBlocks, cdiv
from lm_service.engine.encoder_cache import EncoderCachePool
from lm_service.engine.request import FinishReason, Request, RequestStatus
from lm_service.engine.state_pool import StatePool
from protos.errors import InvalidRequest, Overloaded


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Limits of one LM engine.

    Args:
        max_num_batched_tokens: token budget of one step (all requests together).
        max_num_seqs: most requests running at once.
        block_size: token slots per KV block.
        num_blocks: KV blocks in the cache.
        max_model_len: longest sequence (prompt + output) a request may reach.
        enable_prefix_caching: reuse KV blocks of identical prompt prefixes.
        max_queued_requests: most requests waiting (to start, or to resume after a
            preemption); a new one past it is refused (Overloaded). None: no bound.
        enable_prefix_caching: reuse KV blocks of identical prompt prefixes (forced off
            when there are state slots).
        num_state_slots: recurrent state slots of SSM / hybrid models; 0 for attention-only.
        num_encoder_blocks: cross-attention blocks (of `block_size` encoder positions) of
            encoder-decoder models; 0 for decoder-only ones.
    """

    max_num_batched_tokens: int
    max_num_seqs: int
    block_size: int
    num_blocks: int
    max_model_len: int
    enable_prefix_caching: bool = True
    max_queued_requests: int | None = None
    num_state_slots: int = 0
    num_encoder_blocks: int = 0

    def __post_init__(self) -> None:
        for name in ("num_state_slots", "num_encoder_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in (
            "max_num_batched_tokens",
            "max_num_seqs",
            "block_size",
            "num_blocks",
            "max_model_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0, got {self.max_queued_requests}")

    @property
    def cache_capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class ScheduledRequest:
    """One request's share of a step.

    Args:
        request: the request (mutable; its counts advance in update_from_output).
        num_new_tokens: tokens to run this step, positions [num_computed_tokens, + num_new).
        num_computed_tokens: tokens already in the KV cache when the step was scheduled.
        will_sample: the step catches up with num_tokens, so its last position yields the
            request's next token (False for a prefill chunk that leaves tokens for later).
    """

    request: Request
    num_new_tokens: int
    num_computed_tokens: int
    will_sample: bool

    @classmethod
    def of(cls, request: Request, num_new_tokens: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        will_sample = start + num_new_tokens == request.num_tokens
        return cls(request, num_new_tokens, start, will_sample)

    @property
    def is_prefill_chunk(self) -> bool:
        """Some of these tokens are prompt tokens (or recomputed tokens after preemption)."""
        return self.num_new_tokens > 1 or self.num_computed_tokens < self.request.num_prompt_tokens

    @property
    def new_token_ids(self) -> list[int]:
        start = self.num_computed_tokens
        return self.request.all_token_ids[start : start + self.num_new_tokens]


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """What one step runs.

    Args:
        scheduled: requests of the step, running ones first, in batch order.
        num_scheduled_tokens: sum of num_new_tokens (<= max_num_batched_tokens).
        preempted: requests preempted while scheduling this step (blocks freed, recompute later).
        finished_ids: requests that finished or were aborted since the previous step.
    """

    scheduled: tuple[ScheduledRequest, ...]
    num_scheduled_tokens: int
    preempted: tuple[Request, ...] = ()
    finished_ids: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class SchedulerStats(NamedTuple):
    num_running: int
    num_waiting: int
    num_preemptions: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    prefix_cache_query_tokens: int
    prefix_cache_hit_tokens: int
    state_cache_usage: float = 0.0
    encoder_cache_usage: float = 0.0


class Scheduler:
    """Decides each step's batch and keeps requests' counts and KV blocks in step.

    Args:
        config: the engine's limits.
    """

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.state_pool = StatePool(config.num_state_slots)
        self.encoder_pool = EncoderCachePool(config.num_encoder_blocks, config.block_size)
        self.block_pool = BlockPool(
            config.num_blocks,
            config.block_size,
            config.enable_prefix_caching
            and not self.state_pool.enabled
            and not self.encoder_pool.enabled,
        )
        # NOTE: a sequence ends at the cache's capacity too, so one request alone always fits.
        self.max_model_len = min(config.max_model_len, config.cache_capacity_tokens)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.num_preemptions = 0
        self._finished_ids: list[str] = []

    # ---- requests in and out ----

    def add_request(self, request: Request) -> None:
        """Queue a request; raise Overloaded if its prompt can never fit."""
        self.check_admissible(request.request_id, request.num_encoder_tokens)
        self._check_fits(request.num_prompt_tokens)
        self._check_ranges_fit(request)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def check_admissible(self, request_id: str, num_encoder_tokens: int = 0) -> None:
        """The checks that need no built request: a free id, room in the queue, enough
        cross-attention blocks for `num_encoder_tokens`. The engine runs them before the
        costly part of admitting a request (an encoder-decoder's encoder pass)."""
        if request_id in self.requests:
            raise InvalidRequest(f"request id {request_id!r} is already in use")
        self._check_queue()
        self._check_encoder_fits(num_encoder_tokens)

    def _check_queue(self) -> None:
        limit = self.config.max_queued_requests
        if limit is not None and self.num_waiting >= limit:
            raise Overloaded(
                f"the LM's queue is full: {self.num_waiting} requests are waiting and "
                f"{self.num_running} are running (--max-queued-requests {limit}); retry "
                "shortly or add LM replicas"
            )

    def _check_fits(self, num_prompt_tokens: int) -> None:
        config = self.config
        if num_prompt_tokens > config.max_model_len:
            raise Overloaded(
                f"prompt of {num_prompt_tokens} tokens is longer than "
                f"max_model_len={config.max_model_len}"
            )
        num_blocks = cdiv(num_prompt_tokens, config.block_size)
        if num_blocks > config.num_blocks:
            raise Overloaded(
                f"prompt of {num_prompt_tokens} tokens needs {num_blocks} KV blocks of "
                f"{config.block_size} tokens; the cache has {config.num_blocks} "
                f"({config.cache_capacity_tokens} tokens)"
            )

    def _check_ranges_fit(self, request: Request) -> None:
        """A bidirectional range runs in one step, so it must fit the step's token budget."""
        budget = self.config.max_num_batched_tokens
        for start, end in request.bidirectional_ranges:
            if end - start > budget:
                raise Overloaded(
                    f"positions [{start}, {end}) of the prompt attend each other both ways and "
                    f"must run in one step of {end - start} tokens, but max_num_batched_tokens "
                    f"is {budget}; raise it to at least {end - start}"
                )

    def _check_encoder_fits(self, num_encoder_tokens: int) -> None:
        if not num_encoder_tokens:
            return
        pool = self.encoder_pool
        if not pool.enabled:
            raise InvalidRequest("this model has no cross-attention: it takes no encoder states")
        needed = pool.blocks_needed(num_encoder_tokens)
        if needed > pool.num_blocks:
            raise Overloaded(
                f"{num_encoder_tokens} encoder states need {needed} cross-attention "
                f"blocks; the cache has {pool.num_blocks}"
            )

    def abort(self, request_id: str) -> Request | None:
        """End a request now and free its blocks; None if it is unknown or already done."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self._finish(request, FinishReason.ABORT)
        return request

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def stats(self) -> SchedulerStats:
        cache = self.block_pool.stats
        return SchedulerStats(
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            num_preemptions=self.num_preemptions,
            kv_cache_usage=self.block_pool.usage,
            prefix_cache_hit_rate=cache.hit_rate,
            prefix_cache_query_tokens=cache.num_query_tokens,
            prefix_cache_hit_tokens=cache.num_hit_tokens,
            state_cache_usage=self.state_pool.usage,
            encoder_cache_usage=self.encoder_pool.usage,
        )

    # ---- one step ----

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and tokens, allocating their KV slots."""
        budget = self.config.max_num_batched_tokens
        scheduled, preempted, budget = self._schedule_running(budget)
        if not preempted:  # NOTE: after a preemption, blocks are short: admit nobody new
            scheduled += self._schedule_waiting(budget)
        finished_ids, self._finished_ids = tuple(self._finished_ids), []
        return SchedulerOutput(
            scheduled=tuple(scheduled),
            num_scheduled_tokens=sum(item.num_new_tokens for item in scheduled),
            preempted=tuple(preempted),
            finished_ids=finished_ids,
        )

    def _schedule_running(self, budget: int) -> tuple[list[ScheduledRequest], list[Request], int]:
        scheduled: list[ScheduledRequest] = []
        preempted: list[Request] = []
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = _num_new_tokens(request, request.num_computed_tokens, budget)
            if num_new == 0:  # the rest of a bidirectional range does not fit this step
                index += 1
                continue
            if not self._allocate_or_preempt(request, num_new, preempted):
                break  # the request preempted itself: it was the newest left
            scheduled.append(ScheduledRequest.of(request, num_new))
            budget -= num_new
            index += 1
        return scheduled, preempted, budget

    def _allocate_or_preempt(
        self, request: Request, num_new: int, preempted: list[Request]
    ) -> bool:
        """Allocate slots, preempting the newest running requests until they fit."""
        while not self.block_pool.allocate_slots(request, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.block_pool.free(request)
        self.state_pool.free(request)  # NOTE: the state is recomputed with the tokens
        self.encoder_pool.free(request)  # NOTE: so are the encoder K/V, at its first step
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _schedule_waiting(self, budget: int) -> list[ScheduledRequest]:
        scheduled: list[ScheduledRequest] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if not self.state_pool.can_allocate(request):
                break  # every state slot is taken: wait for a request to finish
            if not self.encoder_pool.can_allocate(request):
                break  # cross-attention blocks are short: wait for a request to finish
            computed = self.block_pool.get_computed_blocks(request)
            num_new = _num_new_tokens(request, computed.num_tokens, budget)
            if num_new == 0 or not self.block_pool.allocate_slots(request, num_new, computed):
                break  # NOTE: first come first served: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.state_pool.allocate(request)
            self.encoder_pool.allocate(request)
            self._start(request, computed)
            scheduled.append(ScheduledRequest.of(request, num_new))
            budget -= num_new
        return scheduled

    def _start(self, request: Request, computed: ComputedBlocks) -> None:
        if request.status == RequestStatus.WAITING:  # a resumed request keeps its first count
            request.num_cached_tokens = computed.num_tokens
        request.num_computed_tokens = computed.num_tokens
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    # ---- after the step ----

    def update_from_output(
        self,
        output: SchedulerOutput | Sequence[ScheduledRequest],
        sampled: Mapping[str, tuple[int, Any]],
    ) -> list[Request]:
        """Advance counts after a step; returns the requests that finished.

        Args:
            output: the step's SchedulerOutput, or its `scheduled` tuple.
            sampled: request id -> (token id, LogprobEntry or None), for each scheduled request
                whose `will_sample` is True (others, mid-prefill, sample nothing).
        """
        scheduled = output.scheduled if isinstance(output, SchedulerOutput) else output
        finished: dict[Request, FinishReason] = {}
        for item in scheduled:
            reason = self._advance(item, sampled)
            if reason is not None:
                finished[item.request] = reason
        if finished:
            self.running = [request for request in self.running if request not in finished]
            for request, reason in finished.items():
                self._finish(request, reason)
        return list(finished)

    def _advance(
        self, item: ScheduledRequest, sampled: Mapping[str, tuple[int, Any]]
    ) -> FinishReason | None:
        """Count the step's tokens as computed, cache full blocks, take the sampled token."""
        request = item.request
        if request.is_finished:  # aborted while the step ran
            return None
        request.num_computed_tokens += item.num_new_tokens
        self.block_pool.cache_full_blocks(request)
        if request.num_computed_tokens < request.num_tokens:
            return None  # mid-prefill chunk: nothing sampled
        token_id, logprob_entry = sampled[request.request_id]
        request.append_output_token(token_id, logprob_entry)
        return request.check_stop(self.max_model_len)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.block_pool.free(request)
        self.state_pool.free(request)
        self.encoder_pool.free(request)
        request.status = RequestStatus.finished_with(reason)
        request.finish_reason = reason
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)


def _num_new_tokens(request: Request, num_computed: int, budget: int) -> int:
    """Tokens to run from `num_computed` on: the rest, capped by the budget (chunked prefill),
    never ending inside a bidirectional range; 0 when the range's rest exceeds the budget."""
    end = min(request.num_tokens, num_computed + budget)
    end = request.chunk_end(num_computed, end)
    return end - num_computed if end - num_computed <= budget else 0
