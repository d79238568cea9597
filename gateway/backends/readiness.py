"""The gateway's grpc.health.v1 tells the truth: SERVING only while its backends can serve.

The overall status ("") and `meshserve.v1.Gateway` are NOT_SERVING while no LM replica is
healthy or a modality the gateway has encoders for has no healthy replica, and SERVING again
as soon as they are. `meshserve.v1.LanguageModel` and `meshserve.v1.Encoder` say which side
is down (as this gateway sees it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health_pb2

from gateway.backends.base import EncoderBackend, LMBackend
from protos.meshserve.v1 import encoder_pb2, lm_pb2

logger = logging.getLogger("meshserve.gateway")

LM_SERVICE = lm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name
ENCODER_SERVICE = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name
POLL_SECONDS = 0.25  # the replica sets' own checks run every second; this only reads them

SetServing = Callable[[bool], Awaitable[None]]  # protos.server.Server.set_serving
SetStatus = Callable[[str, int], Awaitable[None]]  # its health servicer's set(name, status)


async def follow_backends(
    set_serving: SetServing,
    set_status: SetStatus,
    lm: LMBackend,
    encoders: EncoderBackend,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Runs until cancelled: sets the gateway's health from its backends' on every change."""
    last: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    while True:
        down = (lm.unavailable_services(), encoders.unavailable_services())
        if down != last:
            problems = down[0] + down[1]
            if problems:
                logger.warning("gateway NOT_SERVING: %s", "; ".join(problems))
            elif last is not None:
                logger.info("gateway SERVING again: every backend has a healthy replica")
            await _publish(set_serving, set_status, *down)
            last = down
        await asyncio.sleep(poll_seconds)


async def _publish(
    set_serving: SetServing,
    set_status: SetStatus,
    lm_down: tuple[str, ...],
    encoders_down: tuple[str, ...],
) -> None:
    for name, down in ((LM_SERVICE, lm_down), (ENCODER_SERVICE, encoders_down)):
        await set_status(name, _status(not down))
    await set_serving(not (lm_down or encoders_down))


def _status(serving: bool) -> int:
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING
