"""The one server routine for real, on 127.0.0.1 port 0: health while loading, serving and
draining; a failing load leaves nothing bound; the interceptor maps exceptions to statuses
for unary and server-streaming methods alike."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.errors import InvalidRequest
from protos.server import LIVENESS_SERVICE, Server, ServerConfig

SERVICE = "meshserve.test.Dummy"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _raise_for(request: bytes) -> None:
    """The request names what the method does: one of CASES, b"abort" or b"ok"."""
    if request == b"invalid":
        raise InvalidRequest("image 0: not an image")
    if request == b"backend":
        metadata = grpc.aio.Metadata()
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, metadata, metadata, "the LM queue is full"
        )
    if request == b"timeout":
        raise TimeoutError("no encoder answered within 2s")
    if request == b"boom":
        raise RuntimeError("the tower fell over")


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"abort":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such handle")
    _raise_for(request)
    return b"ok"


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    _raise_for(request)
    yield b"last"


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _server(announce_seconds: float = 0.0) -> Server:
    config = ServerConfig(port=0, grace_seconds=5.0, announce_seconds=announce_seconds)
    return Server("test", [SERVICE], _register, config)


async def _health(address: str, service: str = SERVICE) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return reply.status


async def _running(
    server: Server, body: Callable[[str], Awaitable[Any]], stop: asyncio.Event | None = None
) -> Any:
    """Runs `server` (no load) while `body(address)` runs, then drains it."""
    stop = stop or asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready=ready, stop=stop))
    await ready.wait()
    try:
        return await body(f"127.0.0.1:{server.port}")
    finally:
        stop.set()
        await task


def test_health_follows_loading_serving_and_draining() -> None:
    async def scenario() -> list[int]:
        loading, loaded, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def load() -> str:
            loading.set()
            await loaded.wait()
            return "tiny model"

        server = _server(announce_seconds=1.0)
        task = asyncio.create_task(server.run(load=load, stop=stop))
        await loading.wait()
        address = f"127.0.0.1:{server.port}"
        seen = [await _health(address)]
        assert await _health(address, LIVENESS_SERVICE) == SERVING  # alive while loading
        loaded.set()
        await asyncio.sleep(0.1)
        seen.append(await _health(address))
        stop.set()
        await asyncio.sleep(0.2)  # draining, still answering for announce_seconds
        seen.append(await _health(address))
        await asyncio.wait_for(task, 10)
        return seen

    assert asyncio.run(scenario()) == [NOT_SERVING, SERVING, NOT_SERVING]


def test_a_failing_load_leaves_no_server_bound() -> None:
    server = _server()

    async def load() -> str:
        raise OSError("weights not found")

    with pytest.raises(OSError, match="weights not found"):
        asyncio.run(server.run(load=load, stop=asyncio.Event()))
    assert server.port > 0
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", server.port))


CASES = {
    b"invalid": (grpc.StatusCode.INVALID_ARGUMENT, "image 0: not an image"),
    b"backend": (grpc.StatusCode.RESOURCE_EXHAUSTED, "the LM queue is full"),
    b"timeout": (grpc.StatusCode.DEADLINE_EXCEEDED, "no encoder answered within 2s"),
    b"boom": (grpc.StatusCode.INTERNAL, "internal error: RuntimeError: the tower fell over"),
}


def _call(method: str, request: bytes) -> tuple[list[bytes], grpc.StatusCode, str]:
    """(stream messages received, status code, details) of one call."""

    async def body(address: str) -> tuple[list[bytes], grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(address) as channel:
            received: list[bytes] = []
            try:
                if method == "Unary":
                    received.append(await channel.unary_unary(f"/{SERVICE}/Unary")(request))
                else:
                    async for reply in channel.unary_stream(f"/{SERVICE}/Stream")(request):
                        received.append(reply)
            except grpc.aio.AioRpcError as exc:
                return received, exc.code(), exc.details()
            return received, grpc.StatusCode.OK, ""

    return asyncio.run(_running(_server(), body))


@pytest.mark.parametrize("request_bytes", list(CASES))
def test_unary_exceptions_become_their_status(request_bytes: bytes) -> None:
    assert _call("Unary", request_bytes) == ([], *CASES[request_bytes])


@pytest.mark.parametrize("request_bytes", list(CASES))
def test_streaming_exceptions_become_their_status(request_bytes: bytes) -> None:
    assert _call("Stream", request_bytes) == ([b"first"], *CASES[request_bytes])


def test_an_abort_and_a_clean_call_pass_through() -> None:
    assert _call("Unary", b"abort") == ([], grpc.StatusCode.NOT_FOUND, "no such handle")
    assert _call("Unary", b"ok") == ([b"ok"], grpc.StatusCode.OK, "")
    assert _call("Stream", b"ok") == ([b"first", b"last"], grpc.StatusCode.OK, "")
