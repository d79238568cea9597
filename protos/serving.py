"""What every meshserve gRPC server and client shares: options, health, reflection."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

MAX_MESSAGE_BYTES = 256 << 20  # tensors travel in messages
KEEPALIVE_MS = 20_000

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # Clients re-resolve DNS names (compose --scale, k8s headless services) when a connection
    # ends; recycling connections lets a gateway find new replicas. Open streams may finish.
    ("grpc.max_connection_age_ms", 60_000),
    ("grpc.max_connection_age_grace_ms", 600_000),
    ("grpc.so_reuseport", 0),
)

logger = logging.getLogger(__name__)


def make_server(max_workers: int = 64) -> grpc.Server:
    """A thread-pool server with raised message limits and keepalive."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
    return grpc.server(pool, options=SERVER_OPTIONS, maximum_concurrent_rpcs=None)


def bind(server: grpc.Server | grpc.aio.Server, host: str, port: int) -> int:
    """Binds insecure `host:port` (port 0 picks a free one); returns the bound port."""
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpc.aio raises where the sync server returns 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}: the address is in use or not available")
    return bound


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


# For `dns:///name:port` targets: balance over every address behind the name, and let gRPC's
# client-side health checking skip replicas whose grpc.health.v1 status is not SERVING.
BALANCED_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


def channel_options(target: str) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
    if target.startswith("dns:"):
        options.append(("grpc.service_config", BALANCED_SERVICE_CONFIG))
    return options


def channel(target: str) -> grpc.Channel:
    """An insecure client channel with our limits; `dns:///` targets balance over replicas."""
    return grpc.insecure_channel(target, options=channel_options(target))


def health_status(target_or_channel: str | grpc.Channel, timeout: float = 2.0) -> str:
    """ "SERVING", "NOT_SERVING", "UNKNOWN" or "UNREACHABLE" for a server's overall health."""
    ch = channel(target_or_channel) if isinstance(target_or_channel, str) else target_or_channel
    try:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"
    finally:
        if isinstance(target_or_channel, str):
            ch.close()


def parse_bytes(text: str) -> int:
    """ "2GiB", "512MiB", "1e9" or "1048576" -> bytes."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * factor)
    return int(float(lowered))


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


def add_server_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    """--host, --port and --grace-seconds, the same for every service."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"port (default {default_port}; 0 = any free)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight calls may finish (default 30)",
    )


def json_object(text: str) -> dict:
    """argparse type for flags that take a JSON object (--hf-overrides, ...)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"key\": 1}}', got {text!r}"
        )
    return value


# Below Linux's ephemeral range (32768-60999): a port picked here cannot be taken in the
# meantime by some process's outgoing connection, which ephemeral ports can.
_SERVICE_PORTS = range(20000, 32768)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the service binds it a moment later)."""
    import random
    import socket

    for port in random.sample(_SERVICE_PORTS, 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(
        f"no free port between {_SERVICE_PORTS.start} and {_SERVICE_PORTS.stop} on {host}"
    )
