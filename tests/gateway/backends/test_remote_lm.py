"""The remote LM backend against a fake LM server: a stream silent past the stall timeout and a
stream cut by the server both end with UNAVAILABLE and a sentence naming the service and its
address; the backend's own answers (bad input, the client's deadline) travel on unchanged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from gateway.backends.base import LMRequest
from gateway.backends.remote import RemoteLMBackend
from protos.errors import Unavailable
from protos.meshserve.v1 import lm_pb2, lm_pb2_grpc
from protos.sampling_params import SamplingParams
from tests.gateway.backends.test_replicas import Replica


class FakeLM(lm_pb2_grpc.LanguageModelServicer):
    """Over the gateway's shared GenerateStream, answers each request with one token, then
    does what `then` says: "hang" (until the request is aborted), "invalid" or "finish"."""

    def __init__(self) -> None:
        self.then = "finish"
        self.num_cancelled = 0  # requests aborted by the gateway, or cut with the stream
        self.aborted: list[str] = []  # the abort messages received, by request id
        self.stop_server: asyncio.Event | None = None
        self.num_calls = 0  # GenerateStream calls opened

    async def GenerateStream(
        self, requests: AsyncIterator[lm_pb2.LMStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lm_pb2.LMStreamResponse]:
        self.num_calls += 1
        async for message in requests:
            if message.WhichOneof("action") != "generate":
                continue
            request_id = message.generate.request_id
            yield _response(
                request_id, lm_pb2.LMGenerateResponse(token_ids=[7], num_prompt_tokens=2)
            )
            try:
                if self.then == "hang":
                    async for later in requests:
                        if later.abort_request_id == request_id:
                            self.aborted.append(request_id)
                            break
                    self.num_cancelled += 1  # aborted, or the gateway closed the stream
                    return
                if self.then == "invalid":
                    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                    output = lm_pb2.LMStreamOutput(
                        request_id=request_id,
                        error_code=code,
                        error_message="max_tokens is too large",
                    )
                    yield lm_pb2.LMStreamResponse(outputs=[output])
                    continue
            except asyncio.CancelledError:  # the stream was cut
                self.num_cancelled += 1
                raise
            yield _response(request_id, lm_pb2.LMGenerateResponse(token_ids=[8], finish_reason=2))


def _response(request_id: str, step: lm_pb2.LMGenerateResponse) -> lm_pb2.LMStreamResponse:
    return lm_pb2.LMStreamResponse(
        outputs=[lm_pb2.LMStreamOutput(request_id=request_id, step=step)]
    )


@pytest.fixture
def lm() -> Iterator[Replica]:
    replica = Replica(FakeLM(), lm_pb2_grpc.add_LanguageModelServicer_to_server)
    yield replica
    replica.close()


def _generate(
    address: str,
    stall_timeout: float,
    timeout: float | None = 10.0,
    fake: FakeLM | None = None,
) -> list:
    """The tokens received, then the exception that ended the stream (or None). With `fake`,
    waits (briefly) for its abort message BEFORE closing the backend: closing cuts the stream,
    which would hide a missing abort."""
    backend = RemoteLMBackend([address], stall_timeout=stall_timeout)
    request = LMRequest("r", [1, 2], SamplingParams(max_tokens=4))

    async def run() -> list:
        received: list = []
        try:
            async for out in backend.generate(request, timeout):
                received.extend(out.new_token_ids)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            received.append(exc)
        else:
            received.append(None)
        deadline = time.monotonic() + 5.0
        while fake is not None and not fake.aborted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await backend.close()
        return received

    return asyncio.run(run())


def test_a_stream_silent_past_the_stall_timeout_fails_unavailable(lm: Replica) -> None:
    lm.fake.then = "hang"
    *tokens, error = _generate(lm.address, stall_timeout=0.3, fake=lm.fake)
    assert tokens == [7] and isinstance(error, Unavailable)
    assert f"the language model service at {lm.address} sent nothing for 0.3s" in str(error)
    assert lm.fake.aborted == ["r"]  # aborted on the LM, not left running to max_tokens


def test_the_clients_deadline_is_no_stall(lm: Replica) -> None:
    lm.fake.then = "hang"
    *tokens, error = _generate(lm.address, stall_timeout=30, timeout=0.3, fake=lm.fake)
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert lm.fake.aborted == ["r"]  # its KV blocks are freed now, not at max_tokens


def test_a_stream_cut_by_the_server_names_the_service_then_the_transport(lm: Replica) -> None:
    lm.fake.then = "hang"
    lm.loop.call_later(0.3, lambda: asyncio.ensure_future(lm.server.stop()))
    *tokens, error = _generate(lm.address, stall_timeout=30)
    assert tokens == [7] and isinstance(error, Unavailable), error
    sentence = str(error)
    assert sentence.startswith(f"the language model service at {lm.address} failed mid-stream")
    assert "retry shortly (" in sentence and sentence.endswith(")")  # the transport's words


def test_the_backends_own_answer_travels_unchanged(lm: Replica) -> None:
    lm.fake.then = "invalid"
    *tokens, error = _generate(lm.address, stall_timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "max_tokens is too large"


def test_a_stopped_lm_fails_new_requests_with_a_sentence(lm: Replica) -> None:
    address = lm.address
    lm.close()
    (error,) = _generate(address, stall_timeout=30)
    assert isinstance(error, Unavailable)
    assert str(error).startswith(f"the language model service at {address} failed; retry")
    assert "UNAVAILABLE: " in str(error)


@pytest.mark.parametrize(("scheme", "num_calls"), [("", 1), ("ipv4:", 4)])
def test_calls_per_target(lm: Replica, scheme: str, num_calls: int) -> None:
    """A plain HOST:PORT channel reaches one address: its requests share one call (one LM
    message per engine step); a balanced target rotates over several, for the pods behind it."""
    backend = RemoteLMBackend([scheme + lm.address], stall_timeout=30)

    async def one(i: int) -> list[int]:
        request = LMRequest(f"r{i}", [1, 2], SamplingParams(max_tokens=4))
        return [t async for out in backend.generate(request) for t in out.new_token_ids]

    async def run() -> list[list[int]]:
        try:
            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await backend.close()

    assert asyncio.run(run()) == [[7, 8]] * 8
    assert lm.fake.num_calls == num_calls
