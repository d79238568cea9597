"""The gateway's health follows its backends: NOT_SERVING while the LM or an encoder modality
has no healthy replica, SERVING again once they do, per-backend names alongside."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from gateway.backends.base import EncoderBackend, LMBackend
from gateway.backends.readiness import ENCODER_SERVICE, LM_SERVICE, follow_backends

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Down:
    """Stands in for a backend: `down` holds its unavailable_services() sentences."""

    def __init__(self) -> None:
        self.down: tuple[str, ...] = ()

    def unavailable_services(self) -> tuple[str, ...]:
        return self.down


class FakeLM(Down, LMBackend):
    async def info(self) -> Any: ...

    async def generate(self, request: Any, timeout: float | None = None) -> Any: ...


class FakeEncoders(Down, EncoderBackend):
    def modalities(self) -> frozenset[str]:
        return frozenset({"image"})

    async def encode(self, modality: str, items: Sequence[Any], timeout: float | None = None):
        return []


def test_health_follows_the_backends() -> None:
    lm, encoders = FakeLM(), FakeEncoders()
    overall: list[bool] = []
    named: dict[str, int] = {}

    async def set_serving(serving: bool) -> None:
        overall.append(serving)

    async def set_status(name: str, status: int) -> None:
        named[name] = status

    async def run() -> list[tuple[list[bool], dict[str, int]]]:
        seen = []
        task = asyncio.create_task(follow_backends(set_serving, set_status, lm, encoders, 0.01))
        for lm_down, encoders_down in [((), ()), (("lm is gone",), ()), ((), ("no image",))]:
            lm.down, encoders.down = lm_down, encoders_down
            await asyncio.sleep(0.05)
            seen.append((list(overall), dict(named)))
        lm.down = encoders.down = ()
        await asyncio.sleep(0.05)
        task.cancel()
        return seen

    up, lm_gone, image_gone = asyncio.run(run())
    assert up == ([True], {LM_SERVICE: SERVING, ENCODER_SERVICE: SERVING})
    assert lm_gone == ([True, False], {LM_SERVICE: NOT_SERVING, ENCODER_SERVICE: SERVING})
    assert image_gone[0][-1] is False and image_gone[1][ENCODER_SERVICE] == NOT_SERVING
    assert overall[-1] is True  # SERVING again, without a restart
