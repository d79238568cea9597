"""The requests one client multiplexes over one GenerateStream call, on one engine loop.

The engine thread hands each step's outputs for all of the connection's requests over in one
call (one wake-up of the event loop per step, whatever the batch size); the server writes
them as one message. Items are `(request_id, StepOutput | BaseException)`: an exception is
the status that ended that request (refused at admission, or the engine failed).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import torch

from lm_service.engine_loop import EngineLoop, RequestStream
from protos.cross_windows import CrossWindow
from protos.errors import InvalidRequest
from protos.lm_messages import MultiModalSpan, StepOutput
from protos.sampling_params import SamplingParams

StreamItem = tuple[str, StepOutput | BaseException]


class DuplicateRequestId(InvalidRequest):
    """A request whose id is live on the stream already; it ends only itself."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request id {request_id!r} is already running on this stream: give each "
            "request an id of its own"
        )


class _ConnectionStream(RequestStream):
    """One request's outputs, routed through its connection."""

    def __init__(self, request_id: str, sink: StreamConnection) -> None:
        super().__init__(request_id)
        self.sink = sink

    def put(self, item: StepOutput | BaseException) -> None:
        self.sink.deliver([(self, item)])


class StreamConnection:
    """The live requests of one stream and the outputs waiting to be written to it."""

    def __init__(self, loop: EngineLoop, event_loop: asyncio.AbstractEventLoop) -> None:
        self._engine_loop = loop
        self._event_loop = event_loop
        self._live: set[str] = set()
        self._handed: list[tuple[RequestStream, Any]] = []  # from the engine thread
        self._lock = threading.Lock()
        self._ready: list[StreamItem] = []  # on the event loop, not yet taken
        self._waiter: asyncio.Future[None] | None = None
        self._is_closing = False
        self._error: BaseException | None = None  # ends the whole stream

    # --- the engine thread's side (EngineLoop calls `deliver` of a stream's sink) ----
    def deliver(self, items: list[tuple[RequestStream, Any]]) -> None:
        """From the engine thread; raises RuntimeError once the event loop has closed."""
        if self._event_loop.is_closed():  # before queueing: later items would wait forever
            raise RuntimeError("the reader's event loop is closed")
        with self._lock:
            is_first = not self._handed
            self._handed.extend(items)
        if is_first:
            self._event_loop.call_soon_threadsafe(self._take_handed)

    def _take_handed(self) -> None:
        with self._lock:
            items, self._handed = self._handed, []
        self._push([(stream.request_id, item) for stream, item in items])

    # --- the event loop's side -------------------------------------------------------
    def add(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        mm_spans: Sequence[MultiModalSpan] = (),
        mrope_positions: torch.Tensor | None = None,
        encoder_states: torch.Tensor | None = None,
        cross_windows: Sequence[CrossWindow] = (),
    ) -> None:
        """Queues the request on the engine; a refusal becomes that request's last item.

        Live from here on, synchronously: an abort or a close handled right after it reaches
        the engine after it (the engine loop runs commands in order). The caller refuses an
        id already live here (`is_live`, DuplicateRequestId) before it touches anything."""
        self._live.add(request_id)
        stream = _ConnectionStream(request_id, self)
        args = (request_id, prompt_token_ids, sampling_params, mm_spans, mrope_positions)
        submitted = self._engine_loop.submit_nowait(
            *args, stream=stream, encoder_states=encoder_states, cross_windows=cross_windows
        )
        admitted = asyncio.wrap_future(submitted, loop=self._event_loop)
        admitted.add_done_callback(lambda future: self._on_admitted(request_id, future))

    def is_live(self, request_id: str) -> bool:
        return request_id in self._live

    def _on_admitted(self, request_id: str, admitted: asyncio.Future[Any]) -> None:
        if not admitted.cancelled() and (error := admitted.exception()) is not None:
            self._push([(request_id, error)])  # this request's status, the stream goes on

    def refuse(self, request_id: str, error: BaseException) -> None:
        """Ends a request that never reached the engine (its message was bad, its id taken):
        the error goes out without touching the live requests."""
        self._ready.append((request_id, error))
        self._wake()

    def abort(self, request_id: str) -> None:
        if request_id in self._live:
            self._engine_loop.abort(request_id)

    def close_input(self) -> None:
        """The client sent its last request: the stream ends once the live ones have."""
        self._is_closing = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The client broke the protocol (an undecodable message): the stream ends with
        `error`'s status; its requests are aborted when the server closes it."""
        self._error = error
        self._wake()

    def abort_all(self) -> None:
        for request_id in self._live:
            self._engine_loop.abort(request_id)
        self._live.clear()

    async def next_items(self) -> list[StreamItem] | None:
        """Every item waiting (at least one); None once the stream has nothing more."""
        while not self._ready:
            if self._error is not None:
                raise self._error
            if self._is_closing and not self._live:
                return None
            self._waiter = self._event_loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._ready = self._ready, []
        return items

    def _push(self, items: list[StreamItem]) -> None:
        for request_id, item in items:
            if isinstance(item, BaseException) or item.finished:
                self._live.discard(request_id)
        self._ready.extend(items)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
