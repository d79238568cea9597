"""The one place where exceptions become gRPC status codes: `StatusInterceptor`.

Every meshserve server installs it (`protos.server`), so servicers and cores only raise:
a MeshError kind becomes its code (STATUS_OF), a backend's status travels on unchanged,
anything else is INTERNAL with its traceback in the log. Requests are decoded here too
(`decoding`), so bytes that are no valid message are INVALID_ARGUMENT with one WARNING line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from protos import errors

logger = logging.getLogger(__name__)

# Most specific first: LimitExceeded is an InvalidRequest.
STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnknownMedia, grpc.StatusCode.NOT_FOUND),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)

# Not errors of the call: a cancelled call, or one a handler already ended with a status.
PASS_THROUGH: tuple[type[BaseException], ...] = (asyncio.CancelledError, grpc.aio.AbortError)

OnStatus = Callable[[str, grpc.StatusCode], None]  # (method, code) of each call ended in error
Decode = Callable[[bytes], Any]  # a message class's FromString


class UndecodableRequest(errors.InvalidRequest):
    """Bytes that are not a valid message of the method's request type (INVALID_ARGUMENT)."""


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception raised by a core."""
    for exc_type, code in STATUS_OF:
        if isinstance(exc, exc_type):
            return code
    return grpc.StatusCode.INTERNAL


async def abort_with_status(
    context: grpc.aio.ServicerContext,
    exc: Exception,
    method: str = "",
    on_status: OnStatus | None = None,
) -> NoReturn:
    """Ends the call with the status `exc` stands for (raises grpc.aio.AbortError)."""
    code, details = code_and_details(exc)
    if code is grpc.StatusCode.INTERNAL and _set_by_handler(context) is not None:
        code, details = _set_by_handler(context)  # type: ignore[misc]
    if code is grpc.StatusCode.INTERNAL:
        logger.exception("internal error in %s", method or "a call", exc_info=exc)
    elif isinstance(exc, UndecodableRequest):  # the client's fault: one line, no traceback
        logger.warning("%s: %s", method or "a call", details)
    if on_status is not None:
        on_status(method, code)
    await context.abort(code, details)


def code_and_details(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and sentence `exc` ends a call with."""
    if isinstance(exc, grpc.RpcError):  # a backend's status travels to our client unchanged
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return code, details or str(code)
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        return code, f"internal error: {type(exc).__name__}: {exc}"
    return code, str(exc) or code.name


def _set_by_handler(context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
    """The error status a handler set before raising (grpc's generated "not implemented" stubs
    set UNIMPLEMENTED, then raise NotImplementedError), or None."""
    code = context.code()
    if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
        return None
    details = context.details() or code.name
    return code, details.decode() if isinstance(details, bytes) else str(details)


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler of a grpc.aio server so that requests are decoded inside
    the handler and exceptions become statuses.

    NOTE: this is the spot for anything that fails a call before or around its servicer
    method: each call's handler passes through here.

    Args:
        on_status: called with (method, code) for every call this interceptor ends with an
            error status (metrics count refusals by code).
    """

    def __init__(self, on_status: OnStatus | None = None) -> None:
        self.on_status = on_status
        # method -> (its handler, the wrapped one): a server hands out the same handler object
        # for every call of a method, and wrapping it anew cost ~12 us per call
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = with_status(handler, method, self.on_status)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def handler_kind(handler: grpc.RpcMethodHandler) -> str:
    """ "unary_unary", "unary_stream", "stream_unary" or "stream_stream"."""
    return _KINDS[(handler.request_streaming, handler.response_streaming)]


def with_behavior(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[..., Any],
    request_deserializer: Decode | None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializer as `handler` that runs `behavior`."""
    make = getattr(grpc, f"{handler_kind(handler)}_rpc_method_handler")
    return make(
        behavior,
        request_deserializer=request_deserializer,
        response_serializer=handler.response_serializer,
    )


def with_status(
    handler: grpc.RpcMethodHandler, method: str = "", on_status: OnStatus | None = None
) -> grpc.RpcMethodHandler:
    """The same handler, decoding its requests itself and its errors mapped to statuses.

    NOTE: grpc's own deserializer fails a call before any handler runs (UNKNOWN or INTERNAL,
    a traceback at ERROR): the handler gets raw bytes instead and `decoding` parses them.
    """
    behavior = getattr(handler, handler_kind(handler))
    if not handler.request_streaming:
        behavior = as_async(behavior, handler.response_streaming)
    decode = handler.request_deserializer
    if decode is not None and _is_async(behavior):
        behavior, decode = decoding(behavior, decode, handler.request_streaming), None
    return with_behavior(handler, _mapping_errors(behavior, method, on_status), decode)


def _is_async(behavior: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior)


def as_async(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    """A sync method as an async one, run inline on the event loop.

    NOTE: meshserve's servicers are all async; the sync ones left are grpc's generated stubs
    of methods a servicer lacks (grpc.health.v1's List), which only set UNIMPLEMENTED.
    """
    if _is_async(behavior):
        return behavior
    if streaming:

        @functools.wraps(behavior)
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            for reply in behavior(request, context):
                yield reply

        return stream

    @functools.wraps(behavior)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return behavior(request, context)

    return call


def request_type_name(decode: Decode) -> str:
    """ "meshserve.v1.ChatRequest" for ChatRequest.FromString (else the callable's name)."""
    message_class = getattr(decode, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or getattr(decode, "__name__", "request")


def decode_request(decode: Decode, data: bytes) -> Any:
    """`decode(data)`; raises UndecodableRequest naming the message type and the reason."""
    try:
        return decode(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, or a custom deserializer's error
        name = request_type_name(decode)
        reason = str(exc).removeprefix(f"Error parsing message with type '{name}': ")
        reason = reason[:1].lower() + reason[1:] if reason else type(exc).__name__
        raise UndecodableRequest(f"the request is not a valid {name}: {reason}") from None


def decoding(behavior: Callable[..., Any], decode: Decode, streaming: bool) -> Callable[..., Any]:
    """`behavior` taking raw bytes (or a stream of them) and decoding them with `decode`."""

    def convert(request: Any) -> Any:
        if streaming:
            return _decoded_stream(request, decode)
        return decode_request(decode, request)

    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with contextlib.aclosing(behavior(convert(request), context)) as replies:
                async for reply in replies:
                    yield reply

        return stream

    @functools.wraps(behavior)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(convert(request), context)

    return call


async def _decoded_stream(requests: AsyncIterator[bytes], decode: Decode) -> AsyncIterator[Any]:
    async for data in requests:
        yield decode_request(decode, data)


def _mapping_errors(
    behavior: Callable[..., Any], method: str = "", on_status: OnStatus | None = None
) -> Callable[..., Any]:
    """An async method (coroutine or async generator) whose exceptions end the call with
    their status. Sync behaviors (only sync client streams are left: `as_async` converts the
    rest) stay as they are."""
    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:  # closing the wrapper (client gone) closes the servicer's stream at once
                async with contextlib.aclosing(behavior(request, context)) as replies:
                    async for reply in replies:
                        yield reply
            except PASS_THROUGH:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                await abort_with_status(context, exc, method, on_status)

        return stream

    if inspect.iscoroutinefunction(behavior):  # unary replies, or streams via context.write

        @functools.wraps(behavior)
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except PASS_THROUGH:
                raise
            except Exception as exc:  # noqa: BLE001
                await abort_with_status(context, exc, method, on_status)

        return call

    return behavior
