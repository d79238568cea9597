"""Transcription (`--task transcription`): audio -> the audio encoder -> the LM's decoder,
streamed as text.

Whisper through the mesh: the audio encoder answers the encoder states of each 30 s window
of the clip (`encoder_service.towers.whisper`), and each window is one LM request whose
decoder prompt is built as HF's `generate` builds it without timestamps
(`<|startoftranscript|> <|lang|> <|task|> <|notimestamps|>`; English-only checkpoints take no
language or task token) and whose `encoder_states` feed the decoder's cross-attention. The
windows run in order, their text streams as it is decoded, and the finish reason, usage and
timings come with the last chunk. NOTE: sampling parameters (max_tokens included) apply to
each window, as vLLM's transcription endpoint applies them to each chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.backends.base import LMRequest
from gateway.pipeline.detokenizer import IncrementalDetokenizer
from gateway.pipeline.pooling import not_served
from gateway.pipeline.types import (
    GenerationChunk,
    GenerationRequest,
    MediaInput,
    StageTimings,
    Usage,
)
from protos.errors import InvalidRequest, Unsupported
from protos.model_source import CONFIG_PATTERNS, resolve_model
from protos.sampling_params import SamplingParams

TASKS = ("transcribe", "translate")


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """One clip to transcribe.

    Args:
        audio: the file bytes (WAV, FLAC, ...) or (waveform [num_samples], sampling_rate).
        language: e.g. "en" or "<|en|>"; None or "" for English-only checkpoints.
        task: "transcribe", or "translate" (to English).
        timeout: seconds left of the client's deadline.
    """

    request_id: str
    audio: Any
    sampling_params: SamplingParams
    language: str | None = None
    task: str = "transcribe"
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class DecoderPrompt:
    """The decoder prompt rules of a Whisper checkpoint (its generation config)."""

    architecture: str
    start_id: int
    no_timestamps_id: int | None
    is_multilingual: bool
    lang_to_id: Mapping[str, int]
    task_to_id: Mapping[str, int]
    # the first generated token may not be these (HF's SuppressTokensAtBeginLogitsProcessor)
    begin_suppress_ids: tuple[int, ...] = ()

    @classmethod
    def from_pretrained(cls, model: str, architecture: str, revision: str | None) -> DecoderPrompt:
        from transformers import GenerationConfig

        path = resolve_model(model, revision=revision, allow_patterns=CONFIG_PATTERNS)
        config = GenerationConfig.from_pretrained(path)
        if config.decoder_start_token_id is None:
            raise InvalidRequest(
                f"{model}: the generation config sets no decoder_start_token_id, which "
                "transcription starts every window with"
            )
        return cls(
            architecture=architecture,
            start_id=int(config.decoder_start_token_id),
            no_timestamps_id=getattr(config, "no_timestamps_token_id", None),
            is_multilingual=bool(getattr(config, "is_multilingual", False)),
            lang_to_id=dict(getattr(config, "lang_to_id", None) or {}),
            task_to_id=dict(getattr(config, "task_to_id", None) or {}),
            begin_suppress_ids=tuple(getattr(config, "begin_suppress_tokens", None) or ()),
        )

    def sampling_params(self, params: SamplingParams) -> SamplingParams:
        """The request's params with the checkpoint's begin_suppress_tokens added."""
        if not self.begin_suppress_ids:
            return params
        ids = tuple(dict.fromkeys(params.begin_suppress_token_ids + self.begin_suppress_ids))
        return dataclasses.replace(params, begin_suppress_token_ids=ids)

    def token_ids(self, language_id: int | None, task: str) -> list[int]:
        """The prompt for a language token id (multilingual checkpoints) and a task."""
        ids = [self.start_id]
        if self.is_multilingual:
            ids += [language_id, self.task_to_id[task]]
        if self.no_timestamps_id is not None:
            ids.append(int(self.no_timestamps_id))
        return ids

    def check(self, language: str | None, task: str) -> int | None:
        """The language's token id; None when it is to be detected (none given). Raises
        InvalidRequest for a task or language the checkpoint does not know."""
        if task not in TASKS:
            raise InvalidRequest(f"task must be 'transcribe' or 'translate', got {task!r}")
        if not language:
            return None
        token = f"<|{language.removeprefix('<|').removesuffix('|>')}|>"
        if token not in self.lang_to_id:
            codes = sorted(k.removeprefix("<|").removesuffix("|>") for k in self.lang_to_id)
            listed = ", ".join(codes[:8]) + (", ..." if len(codes) > 8 else "")
            raise InvalidRequest(
                f"language {language!r} is not one {self.architecture} knows; "
                f"use a code such as {listed or '(none: this model is English-only)'}"
            )
        return self.lang_to_id[token]


class Transcriber:
    """The transcription side of a gateway Orchestrator (same encoders, LM and tokenizer);
    built with it at start-up (`build`), so a bad checkpoint fails there, not in a request.

    Args:
        window_positions: encoder states of one 30 s window (max_source_positions).
    """

    def __init__(self, orchestrator: Any, prompt: DecoderPrompt, window_positions: int) -> None:
        self.orchestrator = orchestrator
        self.prompt = prompt
        self.window_positions = window_positions

    @classmethod
    def build(cls, orchestrator: Any) -> Transcriber:
        """Reads the checkpoint's generation config (file I/O: call it at start-up)."""
        served = orchestrator.served
        prompt = DecoderPrompt.from_pretrained(served.model, served.architecture, served.revision)
        positions = getattr(orchestrator.prompts.config, "max_source_positions", None)
        if not isinstance(positions, int) or positions < 1:
            raise InvalidRequest(f"{served.model}: the config sets no max_source_positions")
        return cls(orchestrator, prompt, positions)

    @staticmethod
    def of(orchestrator: Any) -> Transcriber:
        """The orchestrator's transcriber; Unsupported unless the gateway serves
        --task transcription."""
        if orchestrator.transcriber is None:
            raise not_served(orchestrator.served, "transcription")
        return orchestrator.transcriber

    async def transcribe_all(self, request: TranscriptionRequest) -> GenerationChunk:
        """The whole transcription as one finished chunk (HTTP's and the offline API's)."""
        text, ids, last = [], [], None
        async with contextlib.aclosing(self.transcribe(request)) as chunks:
            async for chunk in chunks:
                text.append(chunk.text)
                ids.extend(chunk.token_ids)
                last = chunk
        return GenerationChunk(
            request.request_id,
            "".join(text),
            tuple(ids),
            finish_reason=last.finish_reason,
            usage=last.usage,
            timings=last.timings,
            media_cache_hits=last.media_cache_hits,
        )

    async def transcribe(self, request: TranscriptionRequest) -> AsyncIterator[GenerationChunk]:
        """Streams the text of every window in order; raises InvalidRequest for bad audio,
        language or task, Unsupported for sampling options transcription does not take."""
        start = time.perf_counter()
        language_id = self.prompt.check(request.language, request.task)
        _check_params(request.sampling_params)
        item = _audio_input(request.audio)
        # the seed's rule for the row ("A": one audio clip) and a configured audio encoder
        self.orchestrator.validate(
            GenerationRequest(request.request_id, request.sampling_params, media=(item,))
        )
        (encoded,) = await self.orchestrator.encode([item], request.timeout)
        encode_ms = (time.perf_counter() - start) * 1e3
        windows = self._windows(encoded.embeddings)
        if language_id is None and self.prompt.is_multilingual:
            language_id = await self._detect_language(request, windows[0], start)
        prompt = self.prompt.token_ids(language_id, request.task)
        num_out, ttft_ms = 0, 0.0
        for index, window in enumerate(windows):
            # NOTE: closed explicitly: a client gone mid-window aborts the LM request now
            stream = self._window(request, prompt, window, start)
            async with contextlib.aclosing(stream):
                async for out, text in stream:
                    num_out += len(out.new_token_ids)
                    ttft_ms = ttft_ms or (time.perf_counter() - start) * 1e3
                    if out.finish_reason is None or index < len(windows) - 1:
                        yield GenerationChunk(request.request_id, text, out.new_token_ids)
                        continue
                    timings = StageTimings(
                        encode_ms=encode_ms,
                        time_to_first_token_ms=ttft_ms,
                        total_ms=(time.perf_counter() - start) * 1e3,
                    )
                    yield GenerationChunk(
                        request.request_id,
                        text,
                        out.new_token_ids,
                        finish_reason=out.finish_reason,
                        # the decoder prompt is the model's, not the user's: not counted
                        usage=Usage(0, num_out, 0),
                        timings=timings,
                        media_cache_hits=(bool(encoded.cache_hit),),
                    )

    def _windows(self, states: Any) -> Any:
        """[num_windows * window_positions, d_model] -> [num_windows, window_positions, d_model];
        InvalidRequest when the audio encoder answered a count that is not whole windows."""
        num_rows, size = int(states.shape[0]), self.window_positions
        if num_rows == 0 or num_rows % size:
            raise InvalidRequest(
                f"the audio encoder returned {num_rows} encoder states, not a whole number of "
                f"{size}-position windows"
            )
        return states.view(-1, size, states.shape[-1])

    async def _detect_language(
        self, request: TranscriptionRequest, states: Any, start: float
    ) -> int:
        """HF's `detect_language`: one greedy decoder step from `<|startoftranscript|>` over
        the first window, sampled among the language tokens only (their argmax)."""
        languages = tuple(sorted(set(self.prompt.lang_to_id.values())))
        params = SamplingParams(
            max_tokens=1, temperature=0.0, ignore_eos=True, allowed_token_ids=languages
        )
        outputs = self._outputs(request, [self.prompt.start_id], states, start, params)
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                return int(out.new_token_ids[0])
        raise RuntimeError("the LM ended the language detection step without a token")

    async def _window(
        self, request: TranscriptionRequest, prompt: list[int], states: Any, start: float
    ) -> AsyncIterator[tuple[Any, str]]:
        """One window's LM stream: (step output, its text delta)."""
        detok = IncrementalDetokenizer(self.orchestrator.prompts.tokenizer, prompt, True)
        params = self.prompt.sampling_params(request.sampling_params)
        outputs = self._outputs(request, prompt, states, start, params)
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                text = detok.push(list(out.new_token_ids))
                if out.finish_reason is not None:
                    text += detok.finish()
                yield out, text

    async def _outputs(
        self,
        request: TranscriptionRequest,
        prompt: list[int],
        states: Any,
        start: float,
        params: SamplingParams,
    ) -> AsyncIterator[Any]:
        """One LM request over one window's encoder states, within the client's deadline."""
        lm_request = LMRequest(
            # unique per call: clients may reuse their own ids, the LM must not see clashes
            request_id=f"{request.request_id}-{uuid.uuid4().hex[:12]}",
            prompt_token_ids=prompt,
            sampling_params=params,
            encoder_states=states,
        )
        left = None if request.timeout is None else request.timeout - (time.perf_counter() - start)
        if left is not None and left <= 0:
            raise TimeoutError("the deadline expired before transcribing the audio")
        async with contextlib.aclosing(self.orchestrator.lm.generate(lm_request, left)) as outs:
            async for out in outs:
                yield out


def _audio_input(audio: Any) -> MediaInput:
    if isinstance(audio, bytes | bytearray):
        return MediaInput("audio", data=bytes(audio))
    return MediaInput("audio", decoded=audio)


def _check_params(params: SamplingParams) -> None:
    """Stop strings would need the gateway's stop checker across windows; refused for now."""
    if params.stop:
        raise Unsupported("transcription does not support stop strings yet")
