"""What every meshserve gRPC client shares: channel options, `channel()`, `health_status()`."""

from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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

# Clients reconnect to a restarted service within seconds: gRPC's default backoff grows to
# 120s between attempts, which would keep a gateway away from its LM long after it is back.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

# For `dns:///name:port` targets (and `ipv4:a,b` lists): balance over every address behind the
# name, and let gRPC's client-side health checking skip replicas whose grpc.health.v1 status is
# not SERVING.
BALANCED_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


def is_balanced(target: str) -> bool:
    """Whether the channel to `target` spreads its calls over several addresses."""
    return target.startswith(("dns:", "ipv4:", "ipv6:"))


def channel_options(target: str) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = [*CHANNEL_OPTIONS, *RECONNECT_OPTIONS]
    if is_balanced(target):
        options.append(("grpc.service_config", BALANCED_SERVICE_CONFIG))
    return options


def channel(target: str, root_certificates: bytes | None = None) -> grpc.Channel:
    """A client channel with our limits; `dns:///` targets balance over replicas. With
    `root_certificates` (PEM of the CA that signed the server's certificate) it speaks TLS."""
    options = channel_options(target)
    if root_certificates is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return grpc.secure_channel(target, credentials, options=options)


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
