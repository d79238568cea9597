"""One GenerateStream's requests on the LM side, against a fake engine loop: an abort or a
close right behind a request reaches the engine, and a duplicate id is refused without
touching the request that holds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from typing import Any

from lm_service.server import _read_stream_requests
from lm_service.stream_connection import DuplicateRequestId, StreamConnection
from protos.errors import InvalidRequest
from protos.meshserve.v1 import lm_pb2


class FakeEngineLoop:
    """Admits at once (the engine refuses an id already running), records aborts."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.aborted: list[str] = []

    def submit_nowait(self, request_id: str, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if request_id in self.running:
            future.set_exception(InvalidRequest(f"request id {request_id!r} is already running"))
        else:
            self.running.add(request_id)
            future.set_result(kwargs["stream"])
        return future

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


class NoTrackers:
    def open(self, request_id: str) -> None:
        pass


def _generate(request_id: str) -> lm_pb2.LMStreamRequest:
    request = lm_pb2.LMGenerateRequest(request_id=request_id, prompt_token_ids=[1, 2])
    return lm_pb2.LMStreamRequest(generate=request)


def _abort(request_id: str) -> lm_pb2.LMStreamRequest:
    return lm_pb2.LMStreamRequest(abort_request_id=request_id)


async def _messages(items: Sequence[lm_pb2.LMStreamRequest]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _read(messages: Sequence[lm_pb2.LMStreamRequest]) -> tuple[FakeEngineLoop, list]:
    """Reads the messages (all in one event loop turn); the engine, then the items out."""
    engine = FakeEngineLoop()

    async def run() -> list:
        connection = StreamConnection(engine, asyncio.get_running_loop())  # type: ignore[arg-type]
        await _read_stream_requests(_messages(messages), connection, NoTrackers())  # type: ignore[arg-type]
        await asyncio.sleep(0)  # admissions settle
        try:  # what is out by now; "a" itself stays live (the fake engine never steps)
            items = await asyncio.wait_for(connection.next_items(), 0.2) or []
        except TimeoutError:
            items = []
        return items  # NOTE: no abort_all (the server's close), which would hide a lost abort

    return engine, asyncio.run(run())


def test_an_abort_right_behind_its_request_reaches_the_engine() -> None:
    engine, _ = _read([_generate("a"), _abort("a")])
    assert engine.aborted == ["a"]  # not a no-op: it would run unwatched to max_tokens


def test_a_close_right_behind_a_request_aborts_it() -> None:
    engine = FakeEngineLoop()

    async def run() -> None:
        connection = StreamConnection(engine, asyncio.get_running_loop())  # type: ignore[arg-type]
        reading = _read_stream_requests(_messages([_generate("a")]), connection, NoTrackers())
        await reading  # type: ignore[arg-type]
        connection.abort_all()  # the server's finally, before any other task ran

    asyncio.run(run())
    assert engine.aborted == ["a"]


def test_a_duplicate_id_is_refused_alone() -> None:
    engine, items = _read([_generate("a"), _generate("a"), _abort("a")])
    ((request_id, error),) = items
    assert request_id == "a" and isinstance(error, DuplicateRequestId)
    assert "already running on this stream" in str(error)
    assert engine.aborted == ["a"]  # the first "a" is still watched: its abort went out
