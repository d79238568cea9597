"""Requests are decoded inside `StatusInterceptor`: bytes that are no valid message, or a string
field holding invalid UTF-8, are INVALID_ARGUMENT with a sentence naming the message type, one
WARNING line and no traceback; every error status is counted by method and code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from protos.errors import InvalidRequest
from protos.meshserve.v1 import gateway_pb2
from protos.server import Server, ServerConfig
from protos.status import decode_request, request_type_name
from tests.protos.test_server import _running

SERVICE = "meshserve.test.Typed"
CORRUPT = b"\xff\xff\xff\xff"
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (ChatRequest.request_id, a string): bytes ff fe


async def _echo_id(request: gateway_pb2.ChatRequest, context: Any) -> bytes:
    return request.request_id.encode()


async def _stream_ids(request: gateway_pb2.ChatRequest, context: Any) -> AsyncIterator[bytes]:
    yield request.request_id.encode()


def _register(server: grpc.aio.Server) -> None:
    decode = gateway_pb2.ChatRequest.FromString
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_echo_id, request_deserializer=decode),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream_ids, request_deserializer=decode),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _call(path: str, payloads: list[bytes], server: Server) -> tuple[grpc.StatusCode, str]:
    """Status code and details of one call sending `payloads` (several: a client stream)."""

    async def body(address: str) -> tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                if path.endswith("ServerReflectionInfo"):
                    call = channel.stream_stream(path)(iter(payloads))
                elif path.endswith("Stream"):
                    call = channel.unary_stream(path)(payloads[0])
                else:
                    await channel.unary_unary(path)(payloads[0])
                    return grpc.StatusCode.OK, ""
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
            return grpc.StatusCode.OK, ""

    return asyncio.run(_running(server, body))


def _server() -> Server:
    return Server("test", [SERVICE], _register, ServerConfig(port=0, grace_seconds=1.0))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(CORRUPT, "wire format was corrupt"), (BAD_UTF8, "string field had bad UTF-8")],
)
@pytest.mark.parametrize("method", ["Unary", "Stream"])
def test_undecodable_request_is_invalid_argument_with_one_warning(
    method: str, payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        code, details = _call(f"/{SERVICE}/{method}", [payload], _server())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"the request is not a valid meshserve.v1.ChatRequest: {reason}"
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)]
    assert f"/{SERVICE}/{method}" in records[0].getMessage()


def test_a_valid_request_reaches_the_method_decoded() -> None:
    valid = gateway_pb2.ChatRequest(request_id="r-1").SerializeToString()
    assert _call(f"/{SERVICE}/Unary", [valid], _server()) == (grpc.StatusCode.OK, "")


def test_reflection_streams_are_decoded_too() -> None:
    good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    code, details = _call(path, [good, CORRUPT], _server())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(
        "the request is not a valid grpc.reflection.v1alpha.ServerReflectionRequest: "
    )


def test_health_check_with_garbage_is_invalid_argument() -> None:
    code, details = _call("/grpc.health.v1.Health/Check", [CORRUPT], _server())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc.health.v1.HealthCheckRequest" in details


def test_a_generated_stub_of_a_missing_method_stays_unimplemented() -> None:
    valid = health_pb2.HealthListRequest().SerializeToString()
    path = "/grpc.health.v1.Health/List"  # the aio servicer lacks it: grpc's sync stub answers
    assert _call(path, [valid], _server())[0] == grpc.StatusCode.UNIMPLEMENTED
    assert _call(path, [CORRUPT], _server())[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_error_statuses_are_counted_by_method_and_code() -> None:
    server = _server()
    _call(f"/{SERVICE}/Unary", [CORRUPT], server)
    value = server.registry.get_sample_value(
        "meshserve:refused_requests_total",
        {"method": f"/{SERVICE}/Unary", "code": "INVALID_ARGUMENT"},
    )
    assert value == 1.0


def test_decode_request_names_the_type_of_any_deserializer() -> None:
    assert request_type_name(gateway_pb2.ChatRequest.FromString) == "meshserve.v1.ChatRequest"

    def custom(data: bytes) -> str:
        raise ValueError("Not JSON")

    with pytest.raises(InvalidRequest, match="^the request is not a valid custom: not JSON$"):
        decode_request(custom, b"{")
