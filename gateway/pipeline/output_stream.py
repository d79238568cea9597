"""One request's LM outputs -> the chunks its client is streamed: text, stop strings, usage.

Runs once per LM output per request on the gateway's event loop, so it does only what the
request asked for: no stop-string search without stop strings, no held-back chunk with
--stream-interval 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.pipeline.detokenizer import IncrementalDetokenizer
from gateway.pipeline.stop import StopChecker
from gateway.pipeline.types import GenerationChunk, GenerationRequest, StageTimings, Usage
from protos.lm_messages import StepOutput


class OutputStream:
    """Turns one request's StepOutputs into GenerationChunks (None: nothing to send yet).

    Args:
        request: the client's request (id, stop strings, special tokens).
        prompt_token_ids: the prompt the LM runs (detokenizer context, usage).
        tokenizer: the served model's tokenizer.
        timings: the stages before the LM; the last chunk adds TTFT and the total.
        elapsed_ms: milliseconds since the request arrived.
        media_cache_hits: per media item, whether its encoding came from a cache.
        stream_interval: tokens per chunk (the last chunk may hold fewer).
    """

    def __init__(
        self,
        request: GenerationRequest,
        prompt_token_ids: list[int],
        tokenizer: Any,
        timings: StageTimings,
        elapsed_ms: Callable[[], float],
        media_cache_hits: tuple[bool, ...],
        stream_interval: int,
    ) -> None:
        params = request.sampling_params
        self._request_id = request.request_id
        self._prompt_token_ids = prompt_token_ids
        self._detok = IncrementalDetokenizer(
            tokenizer, prompt_token_ids, request.skip_special_tokens
        )
        self._stop = (
            StopChecker(params.stop, request.include_stop_str_in_output) if params.stop else None
        )
        self._timings = timings
        self._elapsed_ms = elapsed_ms
        self._hits = media_cache_hits
        self._interval = stream_interval
        self._held = _Held()
        self._num_out = 0
        self._ttft_ms = 0.0

    def on_output(self, out: StepOutput) -> GenerationChunk | None:
        """The chunk to send for this output; the last one has a finish reason ("stop" when a
        stop string ended the text: the caller then aborts the LM request)."""
        self._num_out += len(out.new_token_ids)
        self._ttft_ms = self._ttft_ms or self._elapsed_ms()
        text, hit = self._cut(self._detok.push(out.new_token_ids))
        if out.finish_reason is not None and not hit:
            # the last held-back bytes may still complete a stop string
            text += self._cut(self._detok.finish())[0]
            if self._stop is not None:
                text += self._stop.flush()
                hit = self._stop.is_stopped
        reason = "stop" if hit else out.finish_reason
        token_ids, logprobs = out.new_token_ids, out.new_logprobs
        if self._interval > 1:
            text, token_ids, logprobs = self._held.add(text, token_ids, logprobs)
        if reason is None:
            if len(token_ids) < self._interval:
                return None
            self._held.clear()
            return GenerationChunk(self._request_id, text, token_ids, logprobs)
        return self._last_chunk(out, text, token_ids, logprobs, reason)

    def _cut(self, delta: str) -> tuple[str, bool]:
        if self._stop is None:
            return delta, False
        result = self._stop.process(delta)
        return result.text, result.stopped

    def _last_chunk(
        self,
        out: StepOutput,
        text: str,
        token_ids: tuple[int, ...],
        logprobs: tuple[Any, ...],
        reason: str,
    ) -> GenerationChunk:
        t = self._timings
        return GenerationChunk(
            self._request_id,
            text,
            token_ids,
            logprobs,
            finish_reason=reason,
            usage=Usage(len(self._prompt_token_ids), self._num_out, out.num_cached_tokens),
            timings=StageTimings(
                validate_ms=t.validate_ms,
                encode_ms=t.encode_ms,
                prompt_ms=t.prompt_ms,
                time_to_first_token_ms=self._ttft_ms,
                total_ms=self._elapsed_ms(),
            ),
            media_cache_hits=self._hits,
            prompt_token_ids=tuple(self._prompt_token_ids),
        )


class _Held:
    """Text, token ids and logprobs of outputs not streamed yet (--stream-interval > 1)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._text = ""
        self._token_ids: tuple[int, ...] = ()
        self._logprobs: tuple[Any, ...] = ()

    def add(
        self, text: str, token_ids: tuple[int, ...], logprobs: tuple[Any, ...]
    ) -> tuple[str, tuple[int, ...], tuple[Any, ...]]:
        """Holds one more output; returns everything held (the next chunk's content)."""
        if self._token_ids:
            text, token_ids = self._text + text, self._token_ids + tuple(token_ids)
            logprobs = self._logprobs + tuple(logprobs)
        self._text, self._token_ids, self._logprobs = text, tuple(token_ids), tuple(logprobs)
        return self._text, self._token_ids, self._logprobs
