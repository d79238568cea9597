"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart file upload), for a
gateway serving a transcription model (`--task transcription`); the gRPC Transcribe's path.
With `stream=true` the text arrives as decoded, as OpenAI's events: `transcript.text.delta`
per piece, then `transcript.text.done` with the whole text and the usage."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from gateway.api.http.context import context_of
from gateway.api.http.streaming import sse_response, until_disconnected
from gateway.pipeline.transcription import Transcriber, TranscriptionRequest
from gateway.pipeline.types import GenerationChunk
from protos.errors import InvalidRequest, Unsupported
from protos.sampling_params import SamplingParams

router = APIRouter()
RESPONSE_FORMATS = ("json", "text")


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form()] = 0.0,
    max_tokens: Annotated[int | None, Form()] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    form = _Form(model, language, prompt, response_format, temperature, max_tokens, stream)
    return await _transcribe(request, file, form, "transcribe")


@router.post("/v1/audio/translations")
async def translations(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form()] = 0.0,
    max_tokens: Annotated[int | None, Form()] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    form = _Form(model, None, prompt, response_format, temperature, max_tokens, stream)
    return await _transcribe(request, file, form, "translate")


@dataclass(frozen=True, slots=True)
class _Form:
    """The form fields both endpoints share."""

    model: str | None
    language: str | None
    prompt: str | None
    response_format: str
    temperature: float
    max_tokens: int | None  # meshserve's extra; default: the model's own limit
    stream: bool


async def _transcribe(request: Request, file: UploadFile, form: _Form, task: str) -> Response:
    ctx = context_of(request)
    ctx.check_model(form.model)
    transcriber = Transcriber.of(ctx.orchestrator)
    _check_form(form)
    audio = await file.read()
    if not audio:
        raise InvalidRequest("file: the uploaded audio file is empty")
    params = SamplingParams(temperature=form.temperature, max_tokens=form.max_tokens)
    job = TranscriptionRequest(
        f"transcr-{uuid.uuid4().hex}", audio, params, form.language or None, task
    )
    if form.stream:
        chunks = transcriber.transcribe(job)
        # NOTE: the first chunk is awaited before the response starts, so a refusal (bad audio,
        # unknown language) still gets its status code
        first = await until_disconnected(request, anext(chunks))
        return sse_response(_stream_events(first, chunks))
    chunk = await until_disconnected(request, transcriber.transcribe_all(job))
    if form.response_format == "text":
        return PlainTextResponse(chunk.text)
    return JSONResponse({"text": chunk.text, "usage": _usage(chunk.usage)})


def _check_form(form: _Form) -> None:
    if form.response_format not in RESPONSE_FORMATS:
        raise Unsupported(
            f"response_format {form.response_format!r} is not supported; use json or text"
        )
    if form.prompt:
        raise Unsupported("prompt (text to guide the transcription) is not supported")
    if form.stream and form.response_format != "json":
        raise Unsupported("stream=true answers events; response_format must be json")


def _usage(usage: Any) -> dict[str, Any]:
    output = usage.completion_tokens if usage else 0
    return {"type": "tokens", "input_tokens": 0, "output_tokens": output, "total_tokens": output}


async def _stream_events(
    first: GenerationChunk, chunks: AsyncIterator[GenerationChunk]
) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's transcription stream events; a client gone closes `chunks`, which aborts the
    LM request."""
    text, last = [first.text], first
    async with contextlib.aclosing(chunks):
        yield {"type": "transcript.text.delta", "delta": first.text}
        async for chunk in chunks:
            text.append(chunk.text)
            last = chunk
            yield {"type": "transcript.text.delta", "delta": chunk.text}
    yield {"type": "transcript.text.done", "text": "".join(text), "usage": _usage(last.usage)}
