"""Server-sent events for streamed answers, and what a client going away does.

A streamed request is opened before the HTTP response starts (its first chunk awaited), so a
refusal still gets its status code; after that an error travels as a `data: {"error": ...}`
event. A client that disconnects cancels the stream: the orchestrator's stream is closed, which
aborts the LM request and frees its KV blocks at once. A non-streamed request is cancelled the
same way when its client goes away before the answer (`until_disconnected`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from gateway.api.http.errors import ApiError, api_error
from gateway.api.http.responses import Reply, TokenText, chat_chunk, completion_chunk, usage_object
from gateway.pipeline.orchestrator import Orchestrator
from gateway.pipeline.types import GenerationChunk, GenerationRequest, Usage

T = TypeVar("T")
DONE = "data: [DONE]\n\n"
_END = object()


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_response(payloads: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(
        _events(payloads), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def _events(payloads: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """SSE lines of `payloads`, an error event if they fail midway, then [DONE]."""
    try:
        async for payload in payloads:
            yield sse(payload)
    except Exception as exc:  # noqa: BLE001 - the status line is sent: the error is an event
        yield sse(api_error(exc).body())
    yield DONE


# ------------------------------------------------------------------------------ streams


async def open_streams(
    orchestrator: Orchestrator, requests: Sequence[GenerationRequest]
) -> list[AsyncIterator[GenerationChunk]]:
    """Starts every request and waits for its first chunk: validation, encoding and prompt
    errors are raised here, before any byte of the response."""
    generators = [orchestrator.generate(r) for r in requests]
    firsts = await asyncio.gather(*(_first(g) for g in generators), return_exceptions=True)
    failed = [f for f in firsts if isinstance(f, BaseException)]
    if failed:
        for generator in generators:
            await generator.aclose()
        raise failed[0]
    return [_resumed(f, g) for f, g in zip(firsts, generators, strict=True)]


async def _first(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk:
    return await anext(chunks)


async def _resumed(
    first: GenerationChunk, chunks: AsyncGenerator[GenerationChunk, None]
) -> AsyncIterator[GenerationChunk]:
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        # NOTE: a disconnect cancels this task's scope; the abort must still run to its end
        with anyio.CancelScope(shield=True):
            await chunks.aclose()


async def merge(
    streams: Sequence[AsyncIterator[GenerationChunk]],
) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """(choice index, chunk) from every stream as chunks arrive."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
        except Exception as exc:  # noqa: BLE001 - handed to the reader
            await queue.put((index, exc))
        await queue.put((index, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item is _END:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


async def chat_payloads(
    reply: Reply,
    streams: Sequence[AsyncIterator[GenerationChunk]],
    text_of: TokenText | None,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    """chat.completion.chunk objects: the role first, then content deltas, then usage."""
    for index in range(len(streams)):
        yield chat_chunk(reply, index, {"role": "assistant", "content": ""})
    usages: list[Usage | None] = [None] * len(streams)
    async for index, chunk in merge(streams):
        delta = {"content": chunk.text} if chunk.text or not chunk.finish_reason else {}
        yield chat_chunk(reply, index, delta, chunk, text_of)
        usages[index] = chunk.usage or usages[index]
    if include_usage:
        yield reply.object(
            "chat.completion.chunk", choices=[], usage=usage_object(usages, len(usages))
        )


async def completion_payloads(
    reply: Reply,
    streams: Sequence[AsyncIterator[GenerationChunk]],
    echoes: Sequence[str],
    n: int,
    text_of: TokenText | None,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    """text_completion chunks; choice `i` answers prompt `i // n`, its echo in its first."""
    usages: list[Usage | None] = [None] * len(streams)
    pending_echo = [echoes[i // n] for i in range(len(streams))]
    async for index, chunk in merge(streams):
        text, pending_echo[index] = pending_echo[index] + chunk.text, ""
        yield completion_chunk(reply, index, text, chunk, text_of)
        usages[index] = chunk.usage or usages[index]
    if include_usage:
        yield reply.object("text_completion", choices=[], usage=usage_object(usages, n))


# ------------------------------------------------------------------------------ disconnects


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or, when the client goes away first, `work` cancelled (its LM
    requests aborted) and a 499 ApiError."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ApiError(499, "the client closed the request before the answer was ready")
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
