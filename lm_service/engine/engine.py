"""The offline engine: scheduler + model runner + sampler, driven step by step."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence

import torch

from kernels.attention import AttentionBackend, backend_for
from kernels.cpu_allocator import tune_cpu_allocator
from lm_service.config import EngineConfig
from lm_service.engine.cache_memory import MemoryMeter, measure_caches
from lm_service.engine.counters import EngineCounters
from lm_service.engine.cross_kv_cache import allocate_cross_kv_caches, num_encoder_blocks_for
from lm_service.engine.kv_cache import allocate_kv_caches, bytes_per_block, num_blocks_for
from lm_service.engine.outputs import RequestOutput
from lm_service.engine.request import Request
from lm_service.engine.runner import ModelRunner
from lm_service.engine.sampler import Sampler, SamplingMetadata
from lm_service.engine.scheduler import Scheduler, SchedulerConfig
from lm_service.engine.state_cache import allocate_state_caches, num_state_slots_for
from lm_service.models.prompt_attention import bidirectional_ranges, prompt_attention_of
from lm_service.models.registry import load_model
from protos.cross_windows import CrossWindow
from protos.errors import InvalidRequest
from protos.lm_messages import MultiModalSpan, StepOutput
from protos.sampling_params import SamplingParams, per_prompt

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Engine:
    """Continuous-batching generation over a paged KV cache.

    Use `generate` for a batch of prompts, or `add_request` / `step` / `abort` to drive it
    incrementally (the gRPC server does).
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()  # page faults on step temporaries cost as much as the math
        self.loaded = load_model(
            config.model,
            model_impl=config.model_impl,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            hf_overrides=config.hf_overrides,
            revision=config.revision,
        )
        text_config = self.loaded.text_config
        self.prompt_attention = prompt_attention_of(self.loaded.hf_config)
        self.sliding_window = getattr(text_config, "sliding_window", None)
        self.vocab_size = int(text_config.vocab_size)
        self.hidden_size = int(text_config.hidden_size)
        self.max_model_len = _max_model_len(config.max_model_len, text_config)
        state_spec = self.loaded.model.state_cache_spec()
        num_slots = num_state_slots_for(state_spec, config.kv_cache_memory, config.max_num_seqs)
        state_bytes = num_slots * state_spec.bytes_per_slot if state_spec else 0
        self.cross_spec = self.loaded.model.cross_attention_spec()
        memory = config.kv_cache_memory - state_bytes
        num_encoder_blocks = num_encoder_blocks_for(
            self.cross_spec,
            config.block_size,
            memory,
            config.max_num_seqs,
            self._kv_bytes_per_request(),
        )
        meter = MemoryMeter(self.device)
        cross_caches = None
        if self.cross_spec is not None:
            memory -= num_encoder_blocks * self.cross_spec.bytes_per_block(config.block_size)
            cross_caches = allocate_cross_kv_caches(
                self.cross_spec, num_encoder_blocks, config.block_size, self.device
            )
        kv_caches = self._allocate_kv_caches(memory)
        state_caches = None
        if state_spec is not None:
            state_caches = allocate_state_caches(state_spec, num_slots, self.device)
            self._log_state_cache(num_slots, state_bytes)
        others = [t for pair in cross_caches or [] for t in pair]
        others += [t for tensors in state_caches or () for t in tensors]
        self.cache_memory = measure_caches(
            meter, kv_caches, others, memory, config.kv_cache_memory, config.block_size
        )
        logger.info("%s", self.cache_memory.describe())  # a box is sized by this flag
        self.runner = ModelRunner(
            self.loaded.model,
            kv_caches,
            config.block_size,
            self.device,
            state_caches,
            cross_caches,
        )
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_batched_tokens=max(config.max_num_batched_tokens, 1),
                max_num_seqs=config.max_num_seqs,
                block_size=config.block_size,
                num_blocks=self.num_blocks,
                enable_prefix_caching=config.enable_prefix_caching and state_spec is None,
                num_encoder_blocks=num_encoder_blocks,
                max_model_len=self.max_model_len,
                max_queued_requests=config.max_queued_requests,
                num_state_slots=num_slots,
            )
        )
        self.counters = EngineCounters()
        self.sampler = Sampler(self.counters)
        self.eos_token_ids = _eos_token_ids(self.loaded.hf_config, str(self.loaded.model_path))
        self._requests: dict[str, Request] = {}
        self._ids = itertools.count()

    def _kv_bytes_per_request(self) -> int:
        """Self-attention KV of one request at max_model_len (both backends: one layout)."""
        block_size = self.config.block_size
        per_block = bytes_per_block(
            self.loaded.model.kv_cache_spec(), AttentionBackend.TORCH, block_size
        )
        return per_block * -(-self.max_model_len // block_size)

    def _allocate_kv_caches(self, memory: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Sizes the paged KV cache from `memory` bytes (sets num_blocks) and allocates it."""
        config = self.config
        spec = self.loaded.model.kv_cache_spec()
        # NOTE: both backends read one layout; a layer that later falls back to the reference
        # (a soft cap this flash-attn lacks) still reads what this backend allocated
        backend = AttentionBackend.TORCH
        if spec.num_layers:  # a pure Mamba model has no KV cache at all
            backend = backend_for(
                self.device, spec.dtype, spec.head_dim, config.block_size,
                v_head_dim=spec.value_head_dim,
            )  # fmt: skip
        self.num_blocks = config.num_blocks or num_blocks_for(
            spec, backend, config.block_size, memory, config.max_num_seqs * self.max_model_len
        )
        return allocate_kv_caches(spec, backend, self.num_blocks, config.block_size, self.device)

    def _log_state_cache(self, num_slots: int, state_bytes: int) -> None:
        logger.info(
            "%s keeps a recurrent state per request: %d state slots (%.1f MiB) beside the KV "
            "cache; prefix caching is off for it (a cached KV block cannot restore a Mamba "
            "layer's state)",
            self.loaded.architecture,
            num_slots,
            state_bytes / 2**20,
        )

    # --- incremental interface -------------------------------------------------------
    def add_request(
        self,
        request_id: str | None,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams | None = None,
        mm_spans: Sequence[MultiModalSpan] = (),
        mrope_positions: torch.Tensor | None = None,
        encoder_states: torch.Tensor | None = None,
        cross_windows: Sequence[CrossWindow] = (),
    ) -> str:
        """Queues a request; raises InvalidRequest / Overloaded for what can never run.

        `encoder_states` [num_encoder_tokens, encoder_hidden]: what an encoder-decoder model's
        cross-attention reads (e.g. Whisper's audio encoder output). `cross_windows`: which
        of them each token attends (Mllama's images; `protos.cross_windows`).
        """
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise InvalidRequest(f"request id {request_id!r} is already running")
        prompt = [int(t) for t in prompt_token_ids]
        self._check_prompt(prompt, mm_spans, mrope_positions)
        needs_states = self.cross_spec is not None and self.cross_spec.requires_encoder_states
        if encoder_states is None and needs_states:
            prompt, encoder_states, mm_spans = self._encode_prompt(request_id, prompt, mm_spans)
        self._check_encoder_states(encoder_states)
        windows = check_cross_windows(cross_windows, encoder_states)
        params = self._effective_params(sampling_params or SamplingParams(), len(prompt))
        request = Request(
            request_id=request_id,
            prompt_token_ids=prompt,
            sampling_params=params,
            eos_token_id=None if params.ignore_eos else self.eos_token_ids[0],
            arrival_time=time.monotonic(),
            mm_spans=tuple(mm_spans),
            mrope_positions=mrope_positions,
            bidirectional_ranges=bidirectional_ranges(
                self.prompt_attention, len(prompt), mm_spans, self.sliding_window
            ),
            encoder_states=encoder_states,
            cross_windows=windows,
        )
        self.scheduler.add_request(request)
        self._requests[request_id] = request
        return request_id

    def step(self) -> list[StepOutput]:
        """Runs one scheduled step; returns the new tokens of every request that got one."""
        out = self.scheduler.schedule()
        if not out.scheduled:
            return []
        logits, index = self.runner.execute(out.scheduled)
        self.counters.num_steps += 1
        sampled: dict[str, tuple[int, object]] = {}
        if index:
            requests = [out.scheduled[i].request for i in index]
            meta = SamplingMetadata.from_requests(requests, self.vocab_size, logits.device)
            result = self.sampler(logits, meta)
            token_ids = self.counters.to_host(result.token_ids)
            self.counters.num_sampled_tokens += len(token_ids)
            for row, request in enumerate(requests):
                entry = result.logprobs[row] if result.logprobs is not None else None
                sampled[request.request_id] = (token_ids[row], entry)
        self.scheduler.update_from_output(out.scheduled, sampled)
        return [self._step_output(self._requests[rid]) for rid in sampled]

    def abort(self, request_id: str) -> bool:
        """Stops a request and frees its KV blocks now; False when it was not running."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        self.scheduler.abort(request_id)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def warm_up(self) -> None:
        """One greedy token from a one-token prompt (with zero encoder states for an
        encoder-decoder model), so the first request pays no first-call costs."""
        first = self.eos_token_ids[0] if self.eos_token_ids[0] >= 0 else 0
        states = None
        if self.cross_spec is not None:
            width = self.cross_spec.encoder_hidden_size
            states = torch.zeros(1, width, dtype=self.cross_spec.dtype, device=self.device)
        self.generate([[first]], SamplingParams(max_tokens=1, temperature=0.0), [states])

    @property
    def tasks(self) -> tuple[str, ...]:
        """What a gateway may serve with this model: "generate", or "transcription" for a
        speech-to-text decoder (Whisper)."""
        return tuple(self.loaded.model.tasks)

    # --- batch interface -------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        encoder_states: Sequence[torch.Tensor | None] | None = None,
        cross_windows: Sequence[Sequence[CrossWindow]] | None = None,
    ) -> list[RequestOutput]:
        """Runs every prompt to completion; outputs come back in prompt order.

        `encoder_states`: per prompt, what an encoder-decoder model's cross-attention reads;
        `cross_windows`: per prompt, which of them its tokens attend (see `add_request`).
        """
        params = per_prompt(sampling_params, len(prompts))
        states = list(encoder_states) if encoder_states is not None else [None] * len(prompts)
        windows = list(cross_windows) if cross_windows is not None else [()] * len(prompts)
        ids = [
            self.add_request(None, p, sp, encoder_states=es, cross_windows=w)
            for p, sp, es, w in zip(prompts, params, states, windows, strict=True)
        ]
        requests = [self._requests[rid] for rid in ids]
        while any(rid in self._requests for rid in ids):
            self.step()
        return [_request_output(r) for r in requests]

    def generate_with_spans(
        self,
        prompt: Sequence[int],
        mm_spans: Sequence[MultiModalSpan],
        sampling_params: SamplingParams | None = None,
        mrope_positions: torch.Tensor | None = None,
    ) -> RequestOutput:
        """One prompt whose media rows come from `mm_spans` (embeddings already encoded)."""
        request_id = self.add_request(None, prompt, sampling_params, mm_spans, mrope_positions)
        request = self._requests[request_id]
        while request_id in self._requests:
            self.step()
        return _request_output(request)

    # --- helpers ---------------------------------------------------------------------
    def _step_output(self, request: Request) -> StepOutput:
        reason = request.finish_reason
        if reason is not None:
            self._requests.pop(request.request_id, None)
        return StepOutput(
            request_id=request.request_id,
            new_token_ids=(request.output_token_ids[-1],),
            new_logprobs=(request.output_logprobs[-1],) if request.output_logprobs else (),
            finish_reason=_reason_str(reason),
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_tokens,
        )

    def _check_prompt(
        self, prompt: list[int], spans: Sequence[MultiModalSpan], mrope: torch.Tensor | None
    ) -> None:
        if not prompt:
            raise InvalidRequest("the prompt is empty")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})"
            )
        for i, span in enumerate(spans):
            span.check(i, len(prompt), self.hidden_size)
        if self.runner.uses_mrope and mrope is not None and tuple(mrope.shape) != (3, len(prompt)):
            raise InvalidRequest(
                f"mrope_positions must have shape [3, {len(prompt)}], got {list(mrope.shape)}"
            )

    def _encode_prompt(
        self, request_id: str, prompt: list[int], spans: Sequence[MultiModalSpan]
    ) -> tuple[list[int], torch.Tensor | None, Sequence[MultiModalSpan]]:
        """An encoder-decoder whose encoder reads the prompt (BART, Florence-2 with its media
        spans) encodes it here, in the engine's thread: the decoder then starts from the
        model's decoder prompt, and the spans are spent. The admission checks run first: a
        request refused for a full queue costs no encoder pass."""
        if len(prompt) > self.cross_spec.max_encoder_len:
            raise InvalidRequest(
                f"prompt of {len(prompt)} tokens is longer than {self.loaded.architecture}'s "
                f"encoder takes ({self.cross_spec.max_encoder_len})"
            )
        self.scheduler.check_admissible(request_id, num_encoder_tokens=len(prompt))  # [S] states
        encoded = self.loaded.model.encode_prompt(prompt, spans)
        return (prompt, None, spans) if encoded is None else (*encoded, ())

    def _check_encoder_states(self, states: torch.Tensor | None) -> None:
        spec = self.cross_spec
        name = self.loaded.architecture
        if spec is None:
            if states is not None:
                raise InvalidRequest(f"{name} has no cross-attention: it takes no encoder states")
            return
        if states is None:
            if spec.requires_encoder_states:
                raise InvalidRequest(f"{name} needs encoder states with every request")
            return
        width = spec.encoder_hidden_size
        if states.dim() != 2 or states.shape[1] != width or not states.shape[0]:
            raise InvalidRequest(
                f"encoder states must have shape [n, {width}], got {list(states.shape)}"
            )
        if states.shape[0] > spec.max_encoder_len:
            raise InvalidRequest(
                f"{states.shape[0]} encoder states are more than {name} takes "
                f"({spec.max_encoder_len})"
            )

    def _effective_params(self, params: SamplingParams, num_prompt: int) -> SamplingParams:
        room = self.max_model_len - num_prompt
        if 0 <= room < params.min_tokens:
            raise InvalidRequest(
                f"min_tokens={params.min_tokens} cannot fit: the prompt has {num_prompt} tokens "
                f"and max_model_len is {self.max_model_len}"
            )
        stop_ids = tuple(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids += tuple(t for t in self.eos_token_ids[1:] if t not in stop_ids)
        # NOTE: max_tokens is not clamped here: the scheduler ends every request at
        # max_model_len (finish reason "length"), whatever max_tokens says.
        return dataclasses.replace(params, stop_token_ids=stop_ids)


def _request_output(request: Request) -> RequestOutput:
    return RequestOutput(
        request_id=request.request_id,
        prompt_token_ids=tuple(request.prompt_token_ids),
        token_ids=tuple(request.output_token_ids),
        logprobs=tuple(request.output_logprobs) if request.output_logprobs else None,
        finish_reason=_reason_str(request.finish_reason),
        num_cached_tokens=request.num_cached_tokens,
    )


def _max_model_len(requested: int | None, text_config: object) -> int:
    context = _context_length(text_config)
    if requested is not None and requested > context:
        raise InvalidRequest(
            f"max_model_len={requested} is longer than the model's context length ({context}); "
            f"if the model can take more, say so with --hf-overrides "
            f"'{{\"max_position_embeddings\": {requested}}}'"
        )
    return requested or context


def _context_length(text_config: object) -> int:
    names = ("max_position_embeddings", "max_target_positions", "n_positions")
    for name in (*names, "max_sequence_length", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _eos_token_ids(hf_config: object, model: str) -> list[int]:
    from transformers import GenerationConfig

    eos = None
    with contextlib.suppress(OSError, ValueError):
        eos = GenerationConfig.from_pretrained(model).eos_token_id
    if eos is None:
        eos = getattr(hf_config.get_text_config(), "eos_token_id", None)
    if eos is None:
        eos = getattr(hf_config, "eos_token_id", None)
    if eos is None:
        return [-1]
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def _reason_str(reason: object) -> str | None:
    if reason is None:
        return None
    return str(getattr(reason, "value", reason))


def check_cross_windows(
    windows: Sequence[CrossWindow], states: torch.Tensor | None
) -> tuple[CrossWindow, ...]:
    """Windows sorted by position, each range inside the request's encoder states."""
    if not windows:
        return ()
    num_states = 0 if states is None else int(states.shape[0])
    starts = [int(start) for start, _ in windows]
    if starts != sorted(set(starts)) or starts[0] < 0:
        raise InvalidRequest("cross-attention windows must start at increasing positions >= 0")
    for _, ranges in windows:
        for start, end in ranges:
            if not 0 <= start < end <= num_states:
                raise InvalidRequest(
                    f"cross-attention range [{start}, {end}) is outside the request's "
                    f"{num_states} encoder states"
                )
    return tuple((int(s), tuple((int(a), int(b)) for a, b in r)) for s, r in windows)
