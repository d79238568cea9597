"""Every request the gateway sends one LM replica, over ONE GenerateStream call.

The LM answers with one message per engine step for all of them, so the gateway wakes and
parses once per step rather than once per token per request. The call opens on the first
request and again after it failed; when it fails (the replica gone, cut, stopped), every
request still on it fails with that call's error, as each one's own call would have.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import grpc

from protos.meshserve.v1 import lm_pb2


class RequestOutputs:
    """What the LM sent one request: LMStreamOutput messages, then maybe the call's error."""

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.is_done = False  # finished, failed or ended by its reader

    def push(self, item: lm_pb2.LMStreamOutput | BaseException) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float | None) -> lm_pb2.LMStreamOutput:
        """The next output; TimeoutError after `timeout` seconds of silence; the LM's status
        for this request (or the call's failure) as grpc.aio.AioRpcError."""
        if not self._items:
            # NOTE: a bare timer, not asyncio.wait_for: this runs once per token per request
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        if item.error_code:
            raise rpc_error(_CODES[item.error_code], item.error_message)
        return item


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Call:
    """One GenerateStream call: its outgoing messages and the requests it carries."""

    def __init__(self, stub: Any) -> None:
        self.outbox: asyncio.Queue[lm_pb2.LMStreamRequest | None] = asyncio.Queue()
        self.requests: dict[str, RequestOutputs] = {}
        self.call = stub.GenerateStream(self._messages())
        self.reader = asyncio.create_task(self._read())

    async def _messages(self) -> AsyncIterator[lm_pb2.LMStreamRequest]:
        while (message := await self.outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        error: BaseException
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                for output in message.outputs:
                    outputs = self.requests.get(output.request_id)
                    if outputs is not None:
                        outputs.push(output)
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the LM ended the stream")
        except grpc.aio.AioRpcError as exc:
            error = exc
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.CANCELLED, "the gateway closed the stream")
        for outputs in self.requests.values():
            outputs.push(error)
        self.requests.clear()

    @property
    def is_alive(self) -> bool:
        return not self.reader.done()


class LMStreamMux:
    """The GenerateStream of one replica, shared by its requests."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._call: _Call | None = None

    def start(self, message: lm_pb2.LMGenerateRequest) -> RequestOutputs:
        """Sends the request; its outputs arrive in the returned object."""
        if self._call is None or not self._call.is_alive:
            self._call = _Call(self._stub)
        outputs = RequestOutputs()
        self._call.requests[message.request_id] = outputs
        self._call.outbox.put_nowait(lm_pb2.LMStreamRequest(generate=message))
        return outputs

    def end(self, request_id: str, outputs: RequestOutputs) -> None:
        """The reader is done with the request: abort it on the LM unless it had finished."""
        call = self._call
        if call is None or call.requests.get(request_id) is not outputs:
            return  # its call failed (nothing left to abort) or it was never sent there
        del call.requests[request_id]
        if not outputs.is_done:
            call.outbox.put_nowait(lm_pb2.LMStreamRequest(abort_request_id=request_id))

    async def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.outbox.put_nowait(None)
            call.call.cancel()
            await asyncio.gather(call.reader, return_exceptions=True)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error in the form a call of its own would have raised, for the same handling."""
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details=details)
