"""OpenAI error objects, and the HTTP status of every refusal.

A core's exception gets the gRPC code it gets on the gRPC API (`protos.status.status_of`, the
one exception -> code mapping), and that code its HTTP status here; a backend's gRPC status
(remote LM or encoders) maps the same way. So a refusal has the same sentence and the same kind
over both APIs. Refusals of the HTTP front itself (no such model, no API key, a malformed body)
are `ApiError`s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from protos.status import status_of

logger = logging.getLogger("meshserve.gateway.http")

HTTP_STATUS_OF_CODE: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 400,  # a task or feature this model lacks
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}
# The scheduler's sentence for a prompt the KV cache can never hold (RESOURCE_EXHAUSTED): the
# client must shorten it, so it is a 400 (OpenAI's context_length_exceeded), not a 429.
_PROMPT_NEVER_FITS = re.compile(r"^prompt of \d+ tokens (is longer than|needs \d+ KV blocks)")


class ApiError(Exception):
    """A refusal with its HTTP status and OpenAI error fields.

    Args:
        status: the HTTP status code.
        message: a sentence for the user.
        param: the request field at fault, e.g. "messages[0].content".
        code: a short machine-readable code, e.g. "model_not_found".
    """

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "error")
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}


def api_error(exc: BaseException) -> ApiError:
    """The ApiError a core exception, a backend's gRPC status or an ApiError stands for."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code, message = exc.code(), exc.details() or exc.code().name
    else:
        code, message = status_of(exc), str(exc) or type(exc).__name__
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _PROMPT_NEVER_FITS.match(message):
        return ApiError(400, message, code="context_length_exceeded")
    status = HTTP_STATUS_OF_CODE.get(code)
    if status is None:
        logger.error("internal error", exc_info=exc)
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal")
    return ApiError(status, message, code=code.name.lower())


def invalid_body(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 400 naming the field at fault, from pydantic's errors (not FastAPI's 422 shape)."""
    if not errors:
        return ApiError(400, "the request body is not valid", code="invalid_body")
    error = max(errors, key=lambda e: len(e.get("loc", ())))  # the deepest is the most specific
    if error.get("type") == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        position = error.get("loc", ("body", "?"))[-1]
        return ApiError(
            400,
            f"The request body is not valid JSON (at character {position}): {detail}",
            code="invalid_json",
        )
    field = field_path(error.get("loc", ()))
    if not field and isinstance(error.get("input"), bytes):  # not parsed: not sent as JSON
        return ApiError(
            400,
            "The request body must be JSON, sent with the header 'Content-Type: application/json'",
            code="invalid_json",
        )
    if not field:
        return ApiError(400, f"The request body must be a JSON object: {error.get('msg')}")
    return ApiError(400, f"{field}: {error.get('msg')}", param=field, code="invalid_type")


def field_path(loc: Sequence[Any]) -> str:
    """("body", "messages", 0, "content", "list[ContentPart]", 1, "text") ->
    "messages[0].content[1].text": pydantic's union branch labels and "body" dropped."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "body" and _is_field_name(str(part)):
            path += f".{part}" if path else str(part)
    return path


def _is_field_name(part: str) -> bool:
    return part.isidentifier() and part not in ("str", "int", "float", "bool", "list", "dict")
