"""The one place where exceptions become gRPC status codes: `StatusInterceptor`.

Every meshserve server installs it (`protos.server`), so servicers and cores only raise:
a MeshError kind becomes its code (STATUS_OF), a backend's status travels on unchanged,
anything else is INTERNAL with its traceback in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
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
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)

# Not errors of the call: a cancelled call, or one a handler already ended with a status.
PASS_THROUGH: tuple[type[BaseException], ...] = (asyncio.CancelledError, grpc.aio.AbortError)


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception raised by a core."""
    for exc_type, code in STATUS_OF:
        if isinstance(exc, exc_type):
            return code
    return grpc.StatusCode.INTERNAL


async def abort_with_status(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """Ends the call with the status `exc` stands for (raises grpc.aio.AbortError)."""
    if isinstance(exc, grpc.RpcError):  # a backend's status travels to our client unchanged
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
        details = exc.details() if hasattr(exc, "details") else str(exc)
        await context.abort(code, details or str(code))
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.exception("internal error", exc_info=exc)
        await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
    await context.abort(code, str(exc) or code.name)


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler of a grpc.aio server so that exceptions become statuses.

    NOTE: this is the spot for anything that fails a call before or around its servicer
    method (a request that does not decode, ...): each call's handler passes through here.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return None if handler is None else with_status(handler)


_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def with_status(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, its behavior wrapped by `_mapping_errors`."""
    kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        _mapping_errors(getattr(handler, kind)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _mapping_errors(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """An async method (coroutine or async generator) whose exceptions end the call with
    their status. Sync behaviors stay as they are (meshserve servers have none)."""
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
                await abort_with_status(context, exc)

        return stream

    if inspect.iscoroutinefunction(behavior):  # unary replies, or streams via context.write

        @functools.wraps(behavior)
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except PASS_THROUGH:
                raise
            except Exception as exc:  # noqa: BLE001
                await abort_with_status(context, exc)

        return call

    return behavior
