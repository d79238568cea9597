"""The FastAPI app of the OpenAI HTTP front: routes, the API key, and OpenAI error objects.

Every refusal leaves as `{"error": {"message", "type", "param", "code"}}` with the HTTP status
of its gRPC code (`errors`); a body that is not JSON or has a field of the wrong type is a 400
naming the field, not FastAPI's 422.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from gateway.api.http import audio, generation, pooling
from gateway.api.http.auth import ApiKeyMiddleware
from gateway.api.http.context import HealthProbe, HttpContext
from gateway.api.http.errors import ApiError, api_error, invalid_body
from gateway.api.http.options import HttpOptions
from gateway.pipeline.orchestrator import Orchestrator
from protos.errors import MeshError

OPEN_PATHS = ("/health", "/metrics")  # answered without the API key, like vLLM's


def build_app(
    orchestrator: Orchestrator,
    options: HttpOptions,
    is_serving: HealthProbe,
    registry: Any = None,
) -> FastAPI:
    """The app over `orchestrator` (the gateway's own, which its gRPC API uses too);
    `registry`: the gateway's Prometheus registry, served on GET /metrics."""
    app = FastAPI(title="meshserve", summary="OpenAI-compatible API of a meshserve gateway")
    if registry is not None:
        _add_metrics(app, registry)
    app.state.context = HttpContext.of(orchestrator, options, is_serving)
    app.state.started = int(time.time())
    app.state.max_model_len = 0  # the LM's, once it has described itself
    for router in (generation.router, pooling.router, audio.router):
        app.include_router(router)
    for kind in (ApiError, MeshError, TimeoutError, grpc.RpcError):
        app.add_exception_handler(kind, _refusal)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(Exception, _refusal)  # INTERNAL: a 500, logged with its traceback
    app.add_middleware(ApiKeyMiddleware, api_key=options.api_key, open_paths=OPEN_PATHS)
    return app


def _add_metrics(app: FastAPI, registry: Any) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text: the same registry --metrics-port serves."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def _refusal(request: Request, exc: Exception) -> JSONResponse:
    return error_response(api_error(exc))


async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(invalid_body(exc.errors()))


async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths (404), wrong methods (405), ... in the OpenAI shape."""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(ApiError(exc.status_code, message))
