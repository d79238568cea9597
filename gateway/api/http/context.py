"""What every HTTP route reaches: the gateway's orchestrator and the front's settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from gateway.api.http.errors import ApiError
from gateway.api.http.options import HttpOptions
from gateway.api.http.responses import TokenText
from gateway.pipeline.orchestrator import Orchestrator
from gateway.pipeline.pooling import PoolingOrchestrator

HealthProbe = Callable[[], Awaitable[bool]]  # True while the gateway's gRPC health is SERVING


@dataclass(frozen=True, slots=True)
class HttpContext:
    """The gateway's one orchestrator (the gRPC API's too), its pooling side, the settings.

    Args:
        is_serving: the gateway's gRPC health, as /health reports it.
    """

    orchestrator: Orchestrator
    pooling: PoolingOrchestrator
    options: HttpOptions
    is_serving: HealthProbe
    text_of: TokenText

    @classmethod
    def of(
        cls, orchestrator: Orchestrator, options: HttpOptions, is_serving: HealthProbe
    ) -> HttpContext:
        pooling = PoolingOrchestrator.of(orchestrator)
        text_of = TokenText(orchestrator.prompts.tokenizer)
        return cls(orchestrator, pooling, options, is_serving, text_of)

    @property
    def model_name(self) -> str:
        return self.options.served_model_name or self.orchestrator.served.model

    def check_model(self, name: str | None) -> None:
        """A request may leave `model` out or name the served model; anything else is a 404."""
        if name and name not in (self.model_name, self.orchestrator.served.model):
            raise ApiError(
                404,
                f"The model {name!r} does not exist; this gateway serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )


def context_of(request: Request) -> HttpContext:
    return request.app.state.context
