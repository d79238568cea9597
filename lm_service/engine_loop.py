"""Runs one Engine on its own thread so that many concurrent streams share it.

The engine itself is single-threaded: every call into it (add, abort, step) happens on the
loop thread; other threads talk to it through a command queue and read per-request streams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from lm_service.engine.engine import Engine
from protos.cross_windows import CrossWindow
from protos.lm_messages import MultiModalSpan, StepOutput
from protos.sampling_params import SamplingParams

# The loop thread's OS name; the torch workers it starts inherit it (their CPU is the engine's).
THREAD_NAME = "engine-loop"

logger = logging.getLogger(__name__)

_DONE = object()


class RequestStream:
    """The outputs of one request, in order; ends after the finishing output."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, item: StepOutput | BaseException) -> None:
        self._queue.put(item)

    def get(self, timeout: float | None = None) -> StepOutput:
        """Next output; raises queue.Empty on timeout, or the engine's error."""
        item = self._queue.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def drain(self) -> list[StepOutput]:
        """Outputs already waiting, without blocking."""
        items: list[StepOutput] = []
        while True:
            try:
                items.append(self.get(timeout=0))
            except queue.Empty:
                return items

    def __iter__(self) -> Iterator[StepOutput]:
        while True:
            out = self.get()
            yield out
            if out.finished:
                return


class LoopSink:
    """Hands the outputs of one engine step to the streams read on one event loop in ONE
    wake-up of that loop, however many requests the step served.

    NOTE: the engine thread only appends to a list and, when the loop is not already due to
    drain it, schedules one callback: it never waits on the loop, and the loop wakes once
    per step rather than once per token per request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[AsyncRequestStream, Any]] = []
        self._lock = threading.Lock()

    def deliver(self, items: list[tuple[AsyncRequestStream, Any]]) -> None:
        """From the engine thread; raises RuntimeError once the loop has closed."""
        if self._loop.is_closed():  # before queueing: later items would wait forever
            raise RuntimeError("the reader's event loop is closed")
        with self._lock:
            is_first = not self._pending
            self._pending.extend(items)
        if is_first:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        for stream, item in items:
            stream.on_output(item)


_SINKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopSink] = weakref.WeakKeyDictionary()


def sink_for(loop: asyncio.AbstractEventLoop) -> LoopSink:
    """The one LoopSink of `loop` (made on first use; call it on the loop's thread)."""
    sink = _SINKS.get(loop)
    if sink is None:
        sink = _SINKS[loop] = LoopSink(loop)
    return sink


class AsyncRequestStream(RequestStream):
    """A RequestStream read from an asyncio event loop; step outputs arrive through the
    loop's LoopSink, a few at a time, without an asyncio.Queue."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(request_id)
        self._loop = loop
        self.sink = sink_for(loop)
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: StepOutput | BaseException) -> None:
        # raises RuntimeError once the reader's loop has closed: the engine loop then aborts
        self._loop.call_soon_threadsafe(self.on_output, item)

    def on_output(self, item: StepOutput | BaseException) -> None:
        """On the loop's thread: one more output (or the engine's error)."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_outputs(self, deadline: float | None = None) -> list[StepOutput]:
        """The next output and any others already waiting (several steps may have run);
        TimeoutError once the loop's clock passes `deadline`."""
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                if deadline is None:
                    await self._waiter
                else:
                    await asyncio.wait_for(self._waiter, deadline - self._loop.time())
            finally:
                self._waiter = None
        items = list(self._items)
        self._items.clear()
        for item in items:
            if isinstance(item, BaseException):
                raise item
        return items


class EngineLoop:
    """A background thread stepping the engine while it has work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._commands.put(lambda: None)
        self._thread.join(timeout=10)

    def submit(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        mm_spans: Sequence[MultiModalSpan] = (),
        mrope_positions: torch.Tensor | None = None,
        stream: RequestStream | None = None,
        encoder_states: torch.Tensor | None = None,
        cross_windows: Sequence[CrossWindow] = (),
    ) -> RequestStream:
        """Queues a request; raises the engine's validation error synchronously."""
        args = (request_id, prompt_token_ids, sampling_params, mm_spans, mrope_positions)
        return self.submit_nowait(
            *args, stream=stream, encoder_states=encoder_states, cross_windows=cross_windows
        ).result()

    def submit_nowait(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        mm_spans: Sequence[MultiModalSpan] = (),
        mrope_positions: torch.Tensor | None = None,
        stream: RequestStream | None = None,
        encoder_states: torch.Tensor | None = None,
        cross_windows: Sequence[CrossWindow] = (),
    ) -> Future[RequestStream]:
        """Queues a request without waiting: the future holds its stream, or the engine's
        validation error. Commands run in order, so an abort queued after it finds it in."""
        stream = stream or RequestStream(request_id)

        def add() -> RequestStream:
            self.engine.add_request(
                request_id,
                prompt_token_ids,
                sampling_params,
                mm_spans,
                mrope_positions,
                encoder_states=encoder_states,
                cross_windows=cross_windows,
            )
            self._streams[request_id] = stream
            return stream

        return self._call_nowait(add)

    def abort(self, request_id: str) -> None:
        """Aborts the request (no-op when finished); its stream ends with an "abort" output."""

        def abort() -> None:
            stream = self._streams.pop(request_id, None)
            if self.engine.abort(request_id) and stream is not None:
                _deliver(stream, _abort_output(request_id))

        self._commands.put(abort)

    def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Runs `fn(engine)` on the loop thread and returns its result."""
        return self._call(lambda: fn(self.engine))

    def _call(self, fn: Callable[[], Any]) -> Any:
        return self._call_nowait(fn).result()

    def _call_nowait(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        self._commands.put(run)
        return future

    def _run(self) -> None:
        _name_os_thread(THREAD_NAME)
        while not self._stopping.is_set():
            self._run_commands(block=not self.engine.has_unfinished())
            if self.engine.has_unfinished():
                self._step()

    def _run_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return
        while True:
            try:
                command()
            except Exception:  # noqa: BLE001 - the loop thread must outlive any one command
                logger.exception("engine loop command failed")
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - fail the batch, keep serving
            logger.exception("engine step failed; aborting %d requests", len(self._streams))
            for request_id, stream in list(self._streams.items()):
                self.engine.abort(request_id)
                _deliver(stream, exc)
            self._streams.clear()
            return
        batches: dict[LoopSink, list[tuple[AsyncRequestStream, StepOutput]]] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            sink = getattr(stream, "sink", None)
            if sink is not None:
                batches.setdefault(sink, []).append((stream, out))
            elif not _deliver(stream, out):  # its reader is gone: nobody wants the rest
                self._drop(out.request_id)
        for sink, items in batches.items():
            try:
                sink.deliver(items)
            except Exception:  # noqa: BLE001 - the readers' event loop has closed
                logger.warning(
                    "dropping the outputs of %d requests: their reader is gone", len(items)
                )
                for stream, _ in items:
                    self._drop(stream.request_id)

    def _drop(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self.engine.abort(request_id)


async def stream_outputs(
    loop: EngineLoop,
    request_id: str,
    prompt_token_ids: Sequence[int],
    sampling_params: SamplingParams,
    mm_spans: Sequence[MultiModalSpan] = (),
    mrope_positions: torch.Tensor | None = None,
    timeout: float | None = None,
    *,
    encoder_states: torch.Tensor | None = None,
    cross_windows: Sequence[CrossWindow] = (),
) -> AsyncIterator[list[StepOutput]]:
    """Runs one request on `loop` from asyncio, yielding its outputs in batches.

    Closing the iterator early, cancelling its task or running past `timeout` (TimeoutError)
    aborts the request, which frees its KV blocks at once.
    """
    event_loop = asyncio.get_running_loop()
    stream = AsyncRequestStream(request_id, event_loop)
    deadline = None if timeout is None else event_loop.time() + timeout
    submit = asyncio.ensure_future(
        asyncio.to_thread(
            loop.submit,
            request_id,
            prompt_token_ids,
            sampling_params,
            mm_spans,
            mrope_positions,
            stream,
            encoder_states,
            cross_windows,
        )
    )
    finished = False
    try:
        await asyncio.shield(submit)
        while not finished:
            outputs = await stream.next_outputs(deadline)
            finished = outputs[-1].finished
            yield outputs
    finally:
        if not finished:
            if submit.done():
                loop.abort(request_id)
            else:
                # cancelled while the engine thread is still adding it: abort once the add is
                # in, or the abort would race ahead of it as a no-op
                submit.add_done_callback(lambda _: loop.abort(request_id))


def _name_os_thread(name: str) -> None:
    """Names the calling thread for the OS too (top -H, /proc/<pid>/task/*/comm), so its CPU
    time can be told from the server's; Linux only, a no-op elsewhere."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _deliver(stream: RequestStream, item: StepOutput | BaseException) -> bool:
    try:
        stream.put(item)
    except Exception:  # noqa: BLE001 - e.g. the reader's event loop has closed
        logger.warning("dropping output of %s: its reader is gone", stream.request_id)
        return False
    return True


def _abort_output(request_id: str) -> StepOutput:
    return StepOutput(
        request_id=request_id,
        new_token_ids=(),
        new_logprobs=(),
        finish_reason="abort",
        num_prompt_tokens=0,
        num_cached_tokens=0,
    )
