"""What every meshserve gRPC server shares: options, health, reflection, drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.server import SERVER_OPTIONS, bind  # noqa: F401 - bind: callers of serving.bind

logger = logging.getLogger(__name__)


def make_server(max_workers: int = 64) -> grpc.Server:
    """A thread-pool server with raised message limits and keepalive."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
    return grpc.server(pool, options=SERVER_OPTIONS, maximum_concurrent_rpcs=None)


def add_health_and_reflection(
    server: grpc.Server | grpc.aio.Server, service_names: Sequence[str]
) -> health.HealthServicer:
    """Registers grpc.health.v1 (every service starts NOT_SERVING) and server reflection."""
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    set_serving(servicer, service_names, serving=False)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return servicer


def _status(serving: bool) -> int:
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING


def set_serving(
    servicer: health.HealthServicer, service_names: Sequence[str], *, serving: bool
) -> None:
    """Flips the overall status ("") and each named service's status together."""
    for name in ("", *service_names):
        servicer.set(name, _status(serving))


def serve_until_signal(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    service_names: Sequence[str],
    grace_seconds: float,
) -> None:
    """Blocks until SIGTERM/SIGINT, then drains: NOT_SERVING, finish in-flight RPCs, stop."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("draining: health is NOT_SERVING, in-flight calls get %.0fs", grace_seconds)
    health_servicer.enter_graceful_shutdown()  # NOT_SERVING; kept answerable for a moment
    time.sleep(min(2.0, grace_seconds))
    server.stop(grace_seconds).wait()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (needs a running event loop)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


async def add_aio_health_and_reflection(
    server: grpc.aio.Server, service_names: Sequence[str]
) -> aio_health.HealthServicer:
    """`add_health_and_reflection` for grpc.aio servers.

    NOTE: the sync HealthServicer on an aio server parks one executor thread per open Watch
    (every `dns:///` client holds one): threads run out and shutdown never ends.
    """
    servicer = aio_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await set_serving_aio(servicer, service_names, serving=False)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return servicer


async def set_serving_aio(
    servicer: aio_health.HealthServicer, service_names: Sequence[str], *, serving: bool
) -> None:
    for name in ("", *service_names):
        await servicer.set(name, _status(serving))


async def drain(
    server: grpc.aio.Server,
    health_servicer: aio_health.HealthServicer,
    grace_seconds: float,
    announce_seconds: float = 2.0,
) -> None:
    """NOT_SERVING first, kept answerable for a moment so balancers and probes see it; then
    in-flight calls get `grace_seconds` while no new ones are accepted."""
    logger.info("draining: health is NOT_SERVING, in-flight calls get %.0fs", grace_seconds)
    await health_servicer.enter_graceful_shutdown()  # NOT_SERVING, Watch streams end
    await asyncio.sleep(min(announce_seconds, grace_seconds))
    await server.stop(grace_seconds)
