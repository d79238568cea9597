"""Runs one Engine on its own thread so that many concurrent streams share it.

The engine itself is single-threaded: every call into it (add, abort, step) happens on the
loop thread; other threads talk to it through a command queue and read per-request streams.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from lm_service.engine.engine import Engine
from protos.lm_messages import MultiModalSpan, StepOutput
from protos.sampling_params import SamplingParams

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


class AsyncRequestStream(RequestStream):
    """A RequestStream read from an asyncio event loop instead of a blocking queue."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(request_id)
        self._loop = loop
        self._outputs: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: StepOutput | BaseException) -> None:
        # raises RuntimeError once the reader's loop has closed: the engine loop then aborts
        self._loop.call_soon_threadsafe(self._outputs.put_nowait, item)

    async def next_outputs(self) -> list[StepOutput]:
        """The next output and any others already waiting (several steps may have run)."""
        items = [await self._outputs.get()]
        while not self._outputs.empty():
            items.append(self._outputs.get_nowait())
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
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

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
    ) -> RequestStream:
        """Queues a request; raises the engine's validation error synchronously."""
        stream = stream or RequestStream(request_id)

        def add() -> None:
            self.engine.add_request(
                request_id,
                prompt_token_ids,
                sampling_params,
                mm_spans,
                mrope_positions,
                encoder_states=encoder_states,
            )
            self._streams[request_id] = stream

        self._call(add)
        return stream

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
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        self._commands.put(run)
        return future.result()

    def _run(self) -> None:
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
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            if not _deliver(stream, out):  # its reader is gone: nobody wants the rest
                self._streams.pop(out.request_id, None)
                self.engine.abort(out.request_id)


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
        )
    )
    finished = False
    try:
        await asyncio.shield(submit)
        while not finished:
            left = None if deadline is None else deadline - event_loop.time()
            outputs = await asyncio.wait_for(stream.next_outputs(), left)
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
