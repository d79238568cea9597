"""Every request the gateway sends one LM replica, over a few GenerateStream calls.

The LM answers each call with one message per engine step for all of its requests, so the
gateway wakes and parses once per step rather than once per token per request.

The calls rotate (`LMStreamMux`): a new request goes on the next of `num_calls` calls, and a
call older than `max_call_age` takes no new requests (a fresh call takes its place) and is
half-closed once its last request ended (until then aborts still reach the LM on it). That does two things:
- a `dns:///lm:50061` target (compose, Kubernetes) spreads over the pods behind it: the
  channel's round_robin balances per call, so one never-ending call would stick to one pod;
- no call outlives the server's `grpc.max_connection_age_ms` (protos/server.py): after the
  GOAWAY a connection's calls get the age grace to finish, and no new request joins them.

A call that fails (the replica gone, cut, stopped) fails every request still on it with
UNAVAILABLE, the call's own status in the sentence, as a call of their own would have.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from protos.channels import MAX_MESSAGE_BYTES
from protos.meshserve.v1 import common_pb2, lm_pb2

logger = logging.getLogger(__name__)

NUM_CALLS = 4  # per replica target: how many pods behind one dns target new requests reach
MAX_CALL_AGE_SECONDS = 30.0  # < the server's max_connection_age_ms (60 s)
# An LMStreamRequest wraps the LMGenerateRequest: a few bytes of framing on top of it.
MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES - 1024


class RequestOutputs:
    """What the LM sent one request: LMStreamOutput messages, then maybe the call's error."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.call: _Call | None = None  # the call that carries it (None: never sent)
        self.is_done = False  # the LM ended it (finished, refused) or its call failed
        self._heard_at = self._loop.time()  # the last output (or the start)
        self._silence = 0.0  # how long it may stay silent, and its deadline (loop time)
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def push(self, item: lm_pb2.LMStreamOutput | BaseException) -> None:
        self._items.append(item)
        self._heard_at = self._loop.time()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, silence: float, deadline: float | None = None) -> lm_pb2.LMStreamOutput:
        """The next output; TimeoutError after `silence` seconds without one, or once the
        loop's clock passes `deadline`; the LM's status for this request (or the call's
        failure) as grpc.aio.AioRpcError."""
        if not self._items:
            self._waiter = waiter = self._loop.create_future()
            self._silence, self._deadline = silence, deadline
            if self._timer is None:
                # NOTE: one timer re-armed when it fires, not one per token: this waits once
                # per token per request
                self._timer = self._loop.call_at(self._due(), self._check_silence)
            try:
                await waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, BaseException):
            self._end()
            raise item
        if item.error_code:
            self._end()
            raise rpc_error(_CODES[item.error_code], item.error_message)
        if item.step.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
            self._end()
        return item

    def deadline_passed(self) -> bool:
        return self._deadline is not None and self._loop.time() >= self._deadline

    def close(self) -> None:
        """Its reader is gone: no timer stays behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end(self) -> None:
        self.is_done = True
        self.close()

    def _due(self) -> float:
        due = self._heard_at + self._silence
        return due if self._deadline is None else min(due, self._deadline)

    def _check_silence(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: its next wait arms the timer again
        due = self._due()
        if self._loop.time() >= due:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self._loop.call_at(due, self._check_silence)


class _Call:
    """One GenerateStream call: its outgoing messages and the requests it carries."""

    def __init__(self, stub: Any) -> None:
        self.opened_at = asyncio.get_running_loop().time()
        self.outbox: asyncio.Queue[lm_pb2.LMStreamRequest | None] = asyncio.Queue()
        self.requests: dict[str, RequestOutputs] = {}
        self.is_retiring = False  # takes no new requests; half-closed once it carries none
        self.is_half_closed = False
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
            # The whole call failed (e.g. RESOURCE_EXHAUSTED for another request's message):
            # for the requests on it, the replica failed; retried elsewhere if they can be.
            error = exc
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                details = f"the stream failed ({exc.code().name}: {exc.details()})"
                error = rpc_error(grpc.StatusCode.UNAVAILABLE, details)
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.CANCELLED, "the gateway closed the stream")
        except Exception as exc:  # noqa: BLE001 - no request may wait out the stall timeout
            logger.exception("reading an LM stream failed")
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"reading the stream failed: {exc}")
        for outputs in self.requests.values():
            outputs.push(error)
        self.requests.clear()

    def takes_new_requests(self, now: float, max_age: float) -> bool:
        return not self.reader.done() and not self.is_retiring and now - self.opened_at < max_age

    def retire(self) -> None:
        self.is_retiring = True
        if not self.requests:
            self.half_close()

    def half_close(self) -> None:
        """No more messages: the LM ends the call once its live requests have finished."""
        if not self.is_half_closed:
            self.is_half_closed = True
            self.outbox.put_nowait(None)


class LMStreamMux:
    """The GenerateStream calls of one replica target, shared by its requests.

    Args:
        num_calls: new requests rotate over this many calls (each opened when first needed).
        max_call_age: seconds a call takes new requests; then it is half-closed and replaced.
    """

    def __init__(
        self,
        stub: Any,
        num_calls: int = NUM_CALLS,
        max_call_age: float = MAX_CALL_AGE_SECONDS,
    ) -> None:
        self._stub = stub
        self._max_call_age = max_call_age
        self._slots: list[_Call | None] = [None] * num_calls
        self._turn = itertools.cycle(range(num_calls))
        self._retiring: set[_Call] = set()  # replaced, still finishing their requests

    def start(self, message: lm_pb2.LMGenerateRequest) -> RequestOutputs:
        """Sends the request; its outputs arrive in the returned object. A request too big
        for one gRPC message is refused here, alone: sent, it would fail the whole call."""
        outputs = RequestOutputs()
        size = message.ByteSize()
        if size > MAX_REQUEST_BYTES:
            outputs.push(
                rpc_error(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the request is {size} bytes, over the {MAX_REQUEST_BYTES} bytes one LM "
                    "request may take (its images, audio or prompt are too large): send less",
                )
            )
            return outputs
        call = self._call_for_new_request()
        outputs.call = call
        call.requests[message.request_id] = outputs
        call.outbox.put_nowait(lm_pb2.LMStreamRequest(generate=message))
        return outputs

    def _call_for_new_request(self) -> _Call:
        index = next(self._turn)
        call = self._slots[index]
        now = asyncio.get_running_loop().time()
        if call is not None and not call.takes_new_requests(now, self._max_call_age):
            call.retire()
            self._retiring.add(call)
            call.reader.add_done_callback(lambda _, done=call: self._retiring.discard(done))
            call = None
        if call is None:
            call = self._slots[index] = _Call(self._stub)
        return call

    def end(self, request_id: str, outputs: RequestOutputs) -> None:
        """The reader is done with the request: abort it on the LM unless the LM ended it."""
        outputs.close()
        call = outputs.call
        if call is None or call.requests.get(request_id) is not outputs:
            return  # its call failed (nothing left to abort) or it was never sent
        del call.requests[request_id]
        if not outputs.is_done and not call.reader.done():
            call.outbox.put_nowait(lm_pb2.LMStreamRequest(abort_request_id=request_id))
        if call.is_retiring and not call.requests:
            call.half_close()

    async def close(self) -> None:
        calls = {*self._retiring, *(call for call in self._slots if call is not None)}
        self._slots = [None] * len(self._slots)
        for call in calls:
            call.half_close()
            call.call.cancel()
        await asyncio.gather(*(call.reader for call in calls), return_exceptions=True)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error in the form a call of its own would have raised, for the same handling."""
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details=details)
