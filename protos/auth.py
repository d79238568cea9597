"""The API key rule of the public port, in one place for every front end.

`check_bearer` is the rule itself (pure: the gRPC interceptor here and an HTTP front end both
call it); `ApiKeyInterceptor` applies it to every gRPC method but health and reflection.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from protos.errors import Unauthenticated
from protos.status import handler_kind, with_behavior

API_KEY_ENV = "MESHSERVE_API_KEY"
AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case
# Probes and tools must reach these without a key.
OPEN_SERVICES: tuple[str, ...] = ("/grpc.health.v1.", "/grpc.reflection.")


def check_bearer(metadata_value: str | bytes | None, key: str) -> bool:
    """True when `metadata_value` is "Bearer <key>" (scheme in any case); constant time."""
    if metadata_value is None or not key:
        return False
    value = (
        metadata_value.decode("latin-1") if isinstance(metadata_value, bytes) else metadata_value
    )
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), key.encode())


def refusal(metadata_value: str | bytes | None) -> str:
    """The sentence a client gets when `check_bearer` said no."""
    if metadata_value is None:
        return "this gateway requires an API key: send the metadata 'authorization: Bearer <key>'"
    return "the API key is not valid: send the metadata 'authorization: Bearer <key>'"


def bearer_metadata(key: str) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends with `key`."""
    return ((AUTHORIZATION, f"Bearer {key}"),)


def resolve_api_key(flag_value: str | None, key_file: str | None = None) -> str | None:
    """The key to require: --api-key, else the file of --api-key-file, else $MESHSERVE_API_KEY;
    None when none is set. Raises ValueError for an unreadable or empty key file."""
    if flag_value:
        return flag_value
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"--api-key-file {key_file}: cannot read it ({exc})") from None
        if not key:
            raise ValueError(f"--api-key-file {key_file} is empty; put the API key in it")
        return key
    return os.environ.get(API_KEY_ENV) or None


def metadata_value(metadata: Sequence[tuple[str, Any]] | None, name: str) -> Any:
    """The first value of `name` in a call's invocation metadata (None when absent)."""
    for item_key, value in metadata or ():
        if item_key.lower() == name:
            return value
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <key>` (UNAUTHENTICATED), except
    grpc.health.v1 and reflection.

    NOTE: install it inside `protos.status.StatusInterceptor` (after it in the list), so its
    refusals become statuses, and are counted, like every other error.
    """

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("an API key must not be empty")
        self._key = key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        value = metadata_value(handler_call_details.invocation_metadata, AUTHORIZATION)
        if check_bearer(value, self._key):
            return handler
        return _refusing(handler, refusal(value))


def _refusing(handler: grpc.RpcMethodHandler, sentence: str) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that raises Unauthenticated before reading the request."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unauthenticated(sentence)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unauthenticated(sentence)
        yield  # an async generator, as a streaming method's behavior is

    streams = handler_kind(handler).endswith("_stream")
    return with_behavior(handler, refuse_stream if streams else refuse, None)
