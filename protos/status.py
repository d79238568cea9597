"""The one place where core exceptions become gRPC status codes."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

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


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception raised by a core."""
    for exc_type, code in STATUS_OF:
        if isinstance(exc, exc_type):
            return code
    return grpc.StatusCode.INTERNAL


def _already_aborted(context: grpc.ServicerContext) -> bool:
    return context.code() not in (None, grpc.StatusCode.OK)


def _abort_with(context: grpc.ServicerContext, exc: BaseException) -> None:
    if _already_aborted(context):
        raise exc
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.exception("internal error", exc_info=exc)
        context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
    context.abort(code, str(exc))


def _abort_rpc_error(context: grpc.ServicerContext, exc: grpc.RpcError) -> None:
    # A backend's status travels to our client unchanged.
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
    details = exc.details() if hasattr(exc, "details") else str(exc)
    context.abort(code, details or str(code))


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a sync servicer method (unary or server-streaming) to map exceptions to status."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except grpc.RpcError as exc:
                _abort_rpc_error(context, exc)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                _abort_with(context, exc)

        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except grpc.RpcError as exc:
            _abort_rpc_error(context, exc)
        except Exception as exc:  # noqa: BLE001
            _abort_with(context, exc)

    return unary_wrapper


async def _aio_abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        await context.abort(exc.code(), exc.details() or str(exc.code()))
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.exception("internal error", exc_info=exc)
        await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
    await context.abort(code, str(exc) or code.name)


def aio_grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """`grpc_errors` for grpc.aio servicer methods (coroutines and async generators)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except asyncio.CancelledError:
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                await _aio_abort(context, exc)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await _aio_abort(context, exc)

    return unary_wrapper
