"""Transcription (`--task transcription`): audio in, text out, the model in this process.

The Transcriber takes the LM backend's place for a gateway that serves a Whisper-style model:
it answers `info()` for start-up checks, refuses `generate`, and runs `transcribe` in a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway.backends.base import LMBackend, LMInfo, LMRequest
from gateway.pipeline.types import GenerationChunk, StageTimings, Usage
from lm_service.transcription import TranscriptionModel, check_task
from protos.errors import Unsupported
from protos.lm_messages import StepOutput
from protos.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """One clip to transcribe.

    Args:
        audio: the file bytes (WAV, FLAC, ...) or (waveform [num_samples], sampling_rate).
        language: e.g. "en"; None or "" lets the model detect it.
        task: "transcribe", or "translate" (to English).
        timeout: seconds left of the client's deadline.
    """

    request_id: str
    audio: Any
    sampling_params: SamplingParams
    language: str | None = None
    task: str = "transcribe"
    timeout: float | None = None


class Transcriber(LMBackend):
    """Serves a TranscriptionModel to the gateway; one request runs at a time (a thread)."""

    def __init__(self, model: TranscriptionModel) -> None:
        self.model = model

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: str = "float32",
        device: str = "cpu",
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> Transcriber:
        model = TranscriptionModel.from_pretrained(
            path, dtype, device, trust_remote_code, revision=revision
        )
        return cls(model)

    async def transcribe(self, request: TranscriptionRequest) -> GenerationChunk:
        """The whole answer as one finished chunk; raises InvalidRequest for bad audio,
        language or task, TimeoutError past the deadline."""
        from encoder_service.media import MediaLimits, decode_audio

        start = time.perf_counter()
        check_task(request.task)
        language = self.model.check_language(request.language)
        waveform = await asyncio.to_thread(
            decode_audio, request.audio, 0, MediaLimits(), sampling_rate=self.model.sampling_rate
        )  # [num_samples] float32 mono
        decode_ms = (time.perf_counter() - start) * 1e3
        run = asyncio.to_thread(
            self.model.transcribe, waveform, language, request.task, request.sampling_params
        )
        # NOTE: past the deadline the thread still finishes its generate(); only the reply stops
        result = await asyncio.wait_for(run, request.timeout)
        return GenerationChunk(
            request_id=request.request_id,
            text=result.text,
            token_ids=result.token_ids,
            finish_reason=result.finish_reason,
            # the decoder prompt (<|startoftranscript|>, language, task) is HF's, not counted
            usage=Usage(
                prompt_tokens=0, completion_tokens=len(result.token_ids), cached_prompt_tokens=0
            ),
            timings=StageTimings(encode_ms=decode_ms, total_ms=(time.perf_counter() - start) * 1e3),
        )

    # --- LMBackend: what the gateway's start-up and the other RPCs see ------------------
    async def info(self) -> LMInfo:
        config = self.model.model.config
        return LMInfo(
            architecture=self.model.architecture,
            model_impl="transformers",
            max_model_len=int(getattr(config, "max_target_positions", 0)),
            hidden_size=int(getattr(config, "d_model", 0)),
            vocab_size=int(config.vocab_size),
            uses_mrope=False,
            block_size=0,
            num_blocks=0,
            tasks=("transcription",),
        )

    async def generate(
        self, request: LMRequest, timeout: float | None = None
    ) -> AsyncIterator[StepOutput]:
        raise Unsupported("a transcription model answers Transcribe, not Generate or Chat")
        yield  # an async generator, like the other backends
