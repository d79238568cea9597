"""Raw bytes on the wire: calls that send bytes no serializer made, to any method of a service."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

CORRUPT = b"\xff\xff\xff\xff\xff"  # a tag whose varint never ends: no message parses it
INVALID_UTF8 = b"\xff\xfe"


def methods_of(*services: ServiceDescriptor) -> Iterator[MethodDescriptor]:
    for service in services:
        yield from service.methods


def bad_utf8(message: Descriptor, depth: int = 0) -> bytes | None:
    """A serialized `message` whose first string field (maybe nested) holds invalid UTF-8;
    None when the message has no string field within three levels."""
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return _length_delimited(field.number, INVALID_UTF8)
    if depth >= 3:
        return None
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = bad_utf8(field.message_type, depth + 1)
            if inner is not None:
                return _length_delimited(field.number, inner)
    return None


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def call_raw(
    ch: grpc.Channel,
    method: MethodDescriptor,
    payload: bytes,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 20,
) -> tuple[grpc.StatusCode, str]:
    """Sends `payload` as the request (as the only message of a client stream); returns the
    status code and details the call ended with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = (
        ("stream" if method.client_streaming else "unary")
        + "_"
        + ("stream" if method.server_streaming else "unary")
    )
    callable_ = getattr(ch, kind)(path)
    request = iter([payload]) if method.client_streaming else payload
    try:
        reply = callable_(request, metadata=tuple(metadata), timeout=timeout)
        if method.server_streaming:
            for _ in reply:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
