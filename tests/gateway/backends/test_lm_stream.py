"""The gateway's GenerateStream mux against fake LM servers: new requests rotate over several
calls (so a multi-address target spreads over its pods), a call past its age takes no new
requests and is half-closed while its requests finish, a request too big for one message is
refused alone, and a failure of the whole call reaches its requests as UNAVAILABLE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from gateway.backends import lm_stream
from gateway.backends.base import LMRequest
from gateway.backends.lm_stream import LMStreamMux, RequestOutputs
from gateway.backends.remote import RemoteLMBackend
from protos.channels import channel_options
from protos.meshserve.v1 import lm_pb2, lm_pb2_grpc
from protos.sampling_params import SamplingParams
from tests.gateway.backends.test_replicas import Replica

FIRST = lm_pb2.LMGenerateResponse(token_ids=[7], num_prompt_tokens=2)
LAST = lm_pb2.LMGenerateResponse(token_ids=[8], finish_reason=2)


class StreamLM(lm_pb2_grpc.LanguageModelServicer):
    """Answers each request with a token at once and a last one `delay` seconds later, as
    the LM's StreamConnection does: a half-closed call ends once its live requests have.
    A request whose id is `fail_call_on` fails the whole call with RESOURCE_EXHAUSTED."""

    def __init__(self, delay: float = 0.4, fail_call_on: str | None = None) -> None:
        self.delay = delay
        self.fail_call_on = fail_call_on
        self.calls: list[list[str]] = []  # the request ids of each call, in call order
        self.half_closed: list[int] = []  # the calls whose input ended, in order
        self.aborted: list[str] = []

    async def GenerateStream(
        self, requests: AsyncIterator[lm_pb2.LMStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lm_pb2.LMStreamResponse]:
        index, request_ids = len(self.calls), []
        self.calls.append(request_ids)
        out: asyncio.Queue[Any] = asyncio.Queue()
        live: dict[str, asyncio.Task[None]] = {}

        async def answer(request_id: str) -> None:
            out.put_nowait(_response(request_id, FIRST))
            await asyncio.sleep(self.delay)
            out.put_nowait(_response(request_id, LAST))

        async def read() -> None:
            async for message in requests:
                if message.WhichOneof("action") == "abort_request_id":
                    self.aborted.append(message.abort_request_id)
                    task = live.pop(message.abort_request_id, None)
                    if task is not None:
                        task.cancel()
                    continue
                request_id = message.generate.request_id
                request_ids.append(request_id)
                if request_id == self.fail_call_on:
                    out.put_nowait("fail")
                    return
                live[request_id] = asyncio.create_task(answer(request_id))
            self.half_closed.append(index)
            await asyncio.gather(*live.values(), return_exceptions=True)
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (message := await out.get()) is not None:
                if message == "fail":
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large")
                yield message
        finally:
            for task in (reader, *live.values()):
                task.cancel()


def _response(request_id: str, step: lm_pb2.LMGenerateResponse) -> lm_pb2.LMStreamResponse:
    return lm_pb2.LMStreamResponse(
        outputs=[lm_pb2.LMStreamOutput(request_id=request_id, step=step)]
    )


def _serve(fake: StreamLM) -> Replica:
    return Replica(fake, lm_pb2_grpc.add_LanguageModelServicer_to_server)


@pytest.fixture
def lm() -> Iterator[Replica]:
    replica = _serve(StreamLM())
    yield replica
    replica.close()


def _message(request_id: str) -> lm_pb2.LMGenerateRequest:
    return lm_pb2.LMGenerateRequest(request_id=request_id, prompt_token_ids=[1, 2])


async def _tokens(outputs: RequestOutputs) -> list[int]:
    """Every token of one request, up to its last; its error raises."""
    tokens: list[int] = []
    while True:
        output = await outputs.next(5.0)
        tokens.extend(output.step.token_ids)
        if output.step.finish_reason:
            return tokens


async def _run_mux(target: str, body: Any, **mux_args: Any) -> Any:
    async with grpc.aio.insecure_channel(target, options=channel_options(target)) as channel:
        mux = LMStreamMux(lm_pb2_grpc.LanguageModelStub(channel), **mux_args)
        try:
            return await body(mux, channel)
        finally:
            await mux.close()


def test_a_multi_address_target_spreads_new_requests_over_its_servers() -> None:
    first, second = _serve(StreamLM()), _serve(StreamLM())
    target = f"ipv4:{first.address},{second.address}"

    async def body(mux: LMStreamMux, channel: grpc.aio.Channel) -> list[list[int]]:
        await channel.channel_ready()
        await asyncio.sleep(0.3)  # both subchannels connected: round_robin picks over both
        started = [mux.start(_message(f"r{i}")) for i in range(4)]
        return await asyncio.gather(*(_tokens(outputs) for outputs in started))

    try:
        results = asyncio.run(_run_mux(target, body, num_calls=4))
        assert results == [[7, 8]] * 4
        # four calls, round robin over two servers: each got some (one call would stick)
        assert len(first.fake.calls) + len(second.fake.calls) == 4
        assert first.fake.calls and second.fake.calls
    finally:
        first.close()
        second.close()


def test_an_old_call_takes_no_new_requests_and_its_requests_finish(lm: Replica) -> None:
    async def body(mux: LMStreamMux, channel: grpc.aio.Channel) -> tuple:
        old = mux.start(_message("old"))
        first_token = await old.next(5.0)
        await asyncio.sleep(0.25)  # past max_call_age
        new = mux.start(_message("new"))
        old_rest = await _tokens(old)
        mux.end("old", old)  # its call carries nothing now: half-closed
        return list(first_token.step.token_ids) + old_rest, await _tokens(new)

    old_tokens, new_tokens = asyncio.run(_run_mux(lm.address, body, num_calls=1, max_call_age=0.2))
    assert old_tokens == [7, 8] and new_tokens == [7, 8]  # nothing failed UNAVAILABLE
    assert lm.fake.calls == [["old"], ["new"]]
    assert lm.fake.half_closed[:1] == [0]  # the old call ended cleanly, not at max age
    assert lm.fake.aborted == []


def test_an_abort_still_reaches_the_lm_on_a_retiring_call(lm: Replica) -> None:
    lm.fake.delay = 30.0  # only an abort ends "old"

    async def body(mux: LMStreamMux, channel: grpc.aio.Channel) -> None:
        old = mux.start(_message("old"))
        await old.next(5.0)
        await asyncio.sleep(0.25)
        new = mux.start(_message("new"))  # "old"'s call retires
        await new.next(5.0)
        mux.end("old", old)  # the reader gave up on it
        for _ in range(200):
            if 0 in lm.fake.half_closed:
                break
            await asyncio.sleep(0.01)
        mux.end("new", new)

    asyncio.run(_run_mux(lm.address, body, num_calls=1, max_call_age=0.2))
    assert lm.fake.aborted[:1] == ["old"]
    assert lm.fake.half_closed[:1] == [0]  # then, carrying nothing, it was half-closed


def test_a_request_too_big_for_one_message_is_refused_alone(
    lm: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lm_stream, "MAX_REQUEST_BYTES", 64)

    async def body(mux: LMStreamMux, channel: grpc.aio.Channel) -> tuple:
        small = mux.start(_message("small"))
        big = lm_pb2.LMGenerateRequest(request_id="big", prompt_token_ids=list(range(100)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mux.start(big).next(5.0)
        return refused.value, await _tokens(small)

    error, tokens = asyncio.run(_run_mux(lm.address, body, num_calls=1))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the 64 bytes one LM request may take" in error.details()
    assert tokens == [7, 8]  # the other request on the call went on
    assert lm.fake.calls == [["small"]]  # the big one never left the gateway


def test_a_failed_call_fails_its_other_requests_unavailable() -> None:
    lm = _serve(StreamLM(delay=30.0, fail_call_on="bad"))

    async def body(mux: LMStreamMux, channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
        other = mux.start(_message("other"))
        await other.next(5.0)
        mux.start(_message("bad"))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await other.next(5.0)
        return failed.value

    try:
        error = asyncio.run(_run_mux(lm.address, body, num_calls=1))
    finally:
        lm.close()
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # not the other request's fault
    assert "RESOURCE_EXHAUSTED: message too large" in error.details()


def test_a_request_on_a_failed_call_is_retried_on_another_replica() -> None:
    failing, healthy = _serve(StreamLM(fail_call_on="r")), _serve(StreamLM(delay=0.0))
    backend = RemoteLMBackend([failing.address, healthy.address])
    request = LMRequest("r", [1, 2], SamplingParams(max_tokens=4))

    async def run() -> list[int]:
        try:
            return [t async for out in backend.generate(request, 10.0) for t in out.new_token_ids]
        finally:
            await backend.close()

    try:
        assert asyncio.run(run()) == [7, 8]
        assert failing.fake.calls == [["r"]] and healthy.fake.calls == [["r"]]
    finally:
        failing.close()
        healthy.close()


class _BrokenCall:
    async def read(self) -> None:
        raise ValueError("a message that does not parse")

    def cancel(self) -> None:
        pass


class _BrokenStub:
    def GenerateStream(self, messages: Any) -> _BrokenCall:
        return _BrokenCall()


def test_a_reader_that_breaks_fails_its_requests_at_once() -> None:
    async def run() -> grpc.aio.AioRpcError:
        mux = LMStreamMux(_BrokenStub())
        outputs = mux.start(_message("r"))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await outputs.next(5.0)  # not the stall timeout
            return failed.value
        finally:
            await mux.close()

    error = asyncio.run(run())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "a message that does not parse" in error.details()
