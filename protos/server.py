"""The one way a meshserve gRPC server runs: start NOT_SERVING, load, SERVING, drain, stop.

Every service (gateway, encoder, LM) starts through `serve`:

    await serve("lm", [SERVICE_NAME], register, ServerConfig.from_args(args), load=load)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from protos.channels import CHANNEL_OPTIONS
from protos.metrics import MetricsEndpoint, refusal_counter
from protos.status import StatusInterceptor

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # Clients re-resolve DNS names (compose --scale, k8s headless services) when a connection
    # ends; recycling connections lets a gateway find new replicas. Open streams may finish
    # within the grace: the gateway's GenerateStream calls take new requests for less than the
    # max age (gateway/backends/lm_stream.py MAX_CALL_AGE_SECONDS), so only a request running
    # longer than age + grace is cut.
    ("grpc.max_connection_age_ms", 60_000),
    ("grpc.max_connection_age_grace_ms", 600_000),
    ("grpc.so_reuseport", 0),
)

# A health name that is SERVING from start to drain whatever the service's readiness: for
# liveness probes, which must not restart a gateway only because its LM is down.
LIVENESS_SERVICE = "liveness"

Register = Callable[[grpc.aio.Server], None]  # adds a service's servicers to the server
Load = Callable[[], Awaitable[str]]  # loads and warms the model; returns a line for the log

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where a server listens and how it stops.

    Args:
        host, port: the address to bind; port 0 picks a free one.
        grace_seconds: once draining, how long in-flight calls may finish.
        announce_seconds: how long health says NOT_SERVING while calls are still taken, so
            balancers and probes see it before the server stops accepting.
        metrics_port: serve Prometheus text on host:metrics_port (None: no metrics endpoint).
        tls_cert, tls_key: PEM files; with both, the port speaks TLS only.
    """

    host: str = "127.0.0.1"
    port: int = 0
    grace_seconds: float = 30.0
    announce_seconds: float = 2.0
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if self.grace_seconds < 0 or self.announce_seconds < 0:
            raise ValueError(
                f"--grace-seconds must be >= 0 (got {self.grace_seconds}), and so must "
                f"announce_seconds (got {self.announce_seconds})"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: pass both, or neither")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerConfig:
        """From the flags of `protos.flags.add_server_args` (and --tls-cert/--tls-key where
        the service has them)."""
        return cls(
            host=args.host,
            port=args.port,
            grace_seconds=args.grace_seconds,
            metrics_port=args.metrics_port,
            tls_cert=getattr(args, "tls_cert", None),
            tls_key=getattr(args, "tls_key", None),
        )

    def credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials from the PEM files (None without TLS); OSError names a bad file."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        pair = (_read_pem(self.tls_key, "--tls-key"), _read_pem(self.tls_cert, "--tls-cert"))
        return grpc.ssl_server_credentials([pair])


def _read_pem(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"{flag} {path}: cannot read it ({exc.strerror})") from None


def bind(
    server: grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Binds `host:port` (port 0 picks a free one), with TLS when `credentials` are given;
    returns the bound port."""
    address = f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}: the address is in use or not available")
    return bound


class Server:
    """A grpc.aio server with our options, `StatusInterceptor`, grpc.health.v1 and reflection.

    Health says NOT_SERVING from `start` until `set_serving(True)`, and again from `drain`;
    `LIVENESS_SERVICE` is SERVING from `start` until `drain`. `run` is the whole life of a
    service's server (see `serve`).

    Args:
        name: the service in the log ("lm", "encoder", "gateway").
        service_names: the full gRPC names health reports on, e.g. "meshserve.v1.Encoder".
        register: adds the servicers to the server (once, before it starts).
        interceptors: more server interceptors, run inside `StatusInterceptor` (so that what
            they raise becomes a status too), e.g. `protos.auth.ApiKeyInterceptor`.
        registry: the service's Prometheus registry (default: a new one); the server adds
            `meshserve:refused_requests_total` and serves it on `config.metrics_port`.
    """

    def __init__(
        self,
        name: str,
        service_names: Sequence[str],
        register: Register,
        config: ServerConfig,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.service_names = tuple(service_names)
        self.config = config
        self.port = 0  # the bound port, once started
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = MetricsEndpoint(self.registry)
        self._interceptors = (StatusInterceptor(refusal_counter(self.registry)), *interceptors)
        # NOTE: the sync HealthServicer on an aio server parks one executor thread per open
        # Watch (every `dns:///` client holds one): threads run out and shutdown never ends.
        self.health = aio_health.HealthServicer()
        self._register = register
        self._server: grpc.aio.Server | None = None

    async def run(
        self,
        load: Load | None = None,
        ready: asyncio.Event | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Starts NOT_SERVING, awaits `load`, turns SERVING and sets `ready`; once `stop` is set
        (default: SIGTERM or SIGINT) drains and stops. If `load` raises, the server stops at
        once and the error propagates: no half-started server stays behind."""
        await self.start()
        started = time.monotonic()
        try:
            description = await load() if load is not None else ""
            # NOTE: signals are ours once loaded; a SIGTERM while loading ends the process
            stop = stop or stop_on_signals()
            await self.set_serving(True)
            logging.getLogger(f"meshserve.{self.name}").info(
                "%s ready on %s:%d  %s  (%.1fs)",
                self.name,
                self.config.host,
                self.port,
                description,
                time.monotonic() - started,
            )
            if ready is not None:
                ready.set()
            await stop.wait()
        except BaseException:
            await self.stop()  # the error is the message
            raise
        await self.drain()

    async def start(self) -> int:
        """Registers the servicers, binds and starts, NOT_SERVING; returns the bound port."""
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=self._interceptors)
        self._register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self.set_serving(False)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        config = self.config
        credentials = config.credentials()
        if config.metrics_port is not None:
            port = self.metrics.start(config.host, config.metrics_port)
            logger.info("%s metrics on http://%s:%d/metrics", self.name, config.host, port)
        try:
            self.port = bind(server, config.host, config.port, credentials)
        except BaseException:
            self.metrics.stop()
            raise
        await server.start()
        self._server = server
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Flips the overall status ("") and each named service's status together."""
        status = health_pb2.HealthCheckResponse.NOT_SERVING
        if serving:
            status = health_pb2.HealthCheckResponse.SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """NOT_SERVING first, still answering for `announce_seconds`; then in-flight calls
        get `grace_seconds` while no new ones are accepted."""
        grace = self.config.grace_seconds
        logger.info("draining: health is NOT_SERVING, in-flight calls get %.0fs", grace)
        await self.health.enter_graceful_shutdown()  # NOT_SERVING from now on
        await asyncio.sleep(min(self.config.announce_seconds, grace))
        await self.stop(grace)

    async def stop(self, grace: float = 0.0) -> None:
        """Stops accepting calls; in-flight ones get `grace` seconds, then are cancelled."""
        if self._server is not None:
            await self._server.stop(grace)
        self.metrics.stop()


async def serve(
    name: str,
    service_names: Sequence[str],
    register: Register,
    config: ServerConfig,
    *,
    load: Load | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    registry: CollectorRegistry | None = None,
) -> None:
    """Runs one service's server from start to stop, the same way for every service
    (`Server.run`): NOT_SERVING while `load` runs, SERVING until `stop`, then drained."""
    server = Server(
        name, service_names, register, config, interceptors=interceptors, registry=registry
    )
    await server.run(load, ready, stop)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (needs a running event loop in the main thread)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event
