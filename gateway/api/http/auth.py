"""The bearer check of `--api-key` on the HTTP front: the rule is `protos.auth.check_bearer`,
the same one the gRPC interceptor applies; here it answers with OpenAI error objects."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from gateway.api.http.errors import ApiError
from protos.auth import check_bearer


def check_api_key(authorization: str | None, api_key: str | None) -> None:
    """Nothing when no key is configured or the header carries it; else a 401 ApiError."""
    if api_key is None or check_bearer(authorization, api_key):
        return
    if authorization is None:
        raise ApiError(
            401,
            "This gateway needs an API key: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
        )
    raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")


class ApiKeyMiddleware:
    """An ASGI middleware: every request but `open_paths` needs the key (before its body is
    read, so a caller without it learns nothing else)."""

    def __init__(self, app: Any, api_key: str | None, open_paths: tuple[str, ...]) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.api_key and scope["path"] not in self.open_paths:
            header = dict(scope.get("headers") or ()).get(b"authorization")
            try:
                check_api_key(header.decode("latin-1") if header else None, self.api_key)
            except ApiError as error:
                response = JSONResponse(error.body(), error.status)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
