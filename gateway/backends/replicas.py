"""Health-aware round robin over the replicas of one backend service.

Each replica's grpc.health.v1 status is polled on its own schedule; a replica that answers
NOT_SERVING, cannot be reached or stops answering within `health_timeout` (a frozen process)
gets no new requests. With no healthy replica left, `pick` fails at once with a sentence that
says which service is down and why, instead of handing the request to a dead replica.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.channels import channel_options
from protos.errors import Unavailable

logger = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 1.0
HEALTH_TIMEOUT_SECONDS = 2.0  # a check unanswered this long: the replica is stalled


class ReplicaHealth(enum.Enum):
    """What the last health check of a replica found; the value completes a sentence."""

    SERVING = "is serving"
    NOT_SERVING = "is not serving (loading, draining or restarting)"
    UNREACHABLE = "is unreachable (down or restarting)"
    STALLED = "stopped answering health checks (stalled)"


@dataclass(eq=False, slots=True)
class Replica:
    target: str
    channel: grpc.aio.Channel
    stub: Any
    health_stub: Any = field(default=None, repr=False)
    health: ReplicaHealth = ReplicaHealth.SERVING  # optimistic until the first check
    num_calls: int = 0

    @property
    def is_healthy(self) -> bool:
        return self.health is ReplicaHealth.SERVING


class ReplicaSet:
    """Picks healthy replicas in turn.

    A `dns:///name:port` target is one replica here: gRPC resolves every address behind the
    name and balances over them itself (round_robin), re-resolving as replicas come and go.

    Args:
        service: what the replicas serve, in a sentence: "language model", "image encoder".
        targets: one address per replica.
        make_stub: the service's stub class (or any channel -> stub callable).
    """

    def __init__(
        self,
        service: str,
        targets: Sequence[str],
        make_stub: Callable[[grpc.aio.Channel], Any],
        health_interval: float = HEALTH_INTERVAL_SECONDS,
        health_timeout: float = HEALTH_TIMEOUT_SECONDS,
    ) -> None:
        if not targets:
            raise ValueError(f"no address given for the {service} service")
        self.service = service
        self.targets = tuple(targets)
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self._make_stub = make_stub
        self._replicas: list[Replica] = []
        self._next = 0
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def replicas(self) -> list[Replica]:
        """The replicas, their channels made on first use.

        NOTE: grpc.aio channels belong to the event loop they are made in, so they are made
        here, inside the loop that uses them, never in the constructor.
        """
        if not self._replicas:
            asyncio.get_running_loop()  # fail loudly outside a loop
            self._replicas = [_replica(t, self._make_stub) for t in self.targets]
        return self._replicas

    def start(self) -> None:
        """Starts the background health checks, one task per replica (needs a running loop)."""
        if not self._watchers:
            loop = asyncio.get_running_loop()
            self._watchers = [loop.create_task(self._watch(r)) for r in self.replicas]

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        for replica in self._replicas:
            await replica.channel.close()

    @property
    def is_healthy(self) -> bool:
        """Some replica is SERVING (as far as the last checks know)."""
        return any(r.is_healthy for r in self.replicas)

    def pick(self, exclude: Sequence[Replica] = (), only_healthy: bool = True) -> Replica:
        """The next healthy replica not in `exclude`; Unavailable (a sentence) when none is.

        With `only_healthy=False` (start-up, before anything is SERVING) any replica will do.
        """
        candidates = [r for r in self.replicas if r not in exclude]
        healthy = [r for r in candidates if r.is_healthy]
        if not healthy and (only_healthy or not candidates):
            raise Unavailable(self.why_unavailable())
        choices = healthy or candidates
        replica = choices[self._next % len(choices)]
        self._next += 1
        replica.num_calls += 1
        return replica

    def has_healthy(self, exclude: Sequence[Replica] = ()) -> bool:
        return any(r.is_healthy and r not in exclude for r in self.replicas)

    def why_unavailable(self) -> str:
        """The sentence a client gets while no replica is healthy."""
        if len(self.replicas) == 1:
            (replica,) = self.replicas
            return (
                f"the {self.service} service at {replica.target} {replica.health.value}; "
                "retry shortly"
            )
        states = "; ".join(f"{r.target} {r.health.value}" for r in self.replicas)
        return f"no {self.service} replica is healthy ({states}); retry shortly"

    def mark_down(self, replica: Replica) -> None:
        """A call found the replica unreachable: no new requests until a check says SERVING."""
        self._set_health(replica, ReplicaHealth.UNREACHABLE)

    async def _watch(self, replica: Replica) -> None:
        while True:
            self._set_health(replica, await self._check(replica))
            await asyncio.sleep(self.health_interval)

    async def _check(self, replica: Replica) -> ReplicaHealth:
        request = health_pb2.HealthCheckRequest()
        try:
            reply = await replica.health_stub.Check(request, timeout=self.health_timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return ReplicaHealth.STALLED
            return ReplicaHealth.UNREACHABLE
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return ReplicaHealth.SERVING
        return ReplicaHealth.NOT_SERVING

    def _set_health(self, replica: Replica, health: ReplicaHealth) -> None:
        if health is not replica.health:
            log = logger.info if health is ReplicaHealth.SERVING else logger.warning
            log("%s replica %s %s", self.service, replica.target, health.value)
        replica.health = health


def _replica(target: str, make_stub: Callable[[grpc.aio.Channel], Any]) -> Replica:
    channel = grpc.aio.insecure_channel(target, options=channel_options(target))
    return Replica(
        target=target,
        channel=channel,
        stub=make_stub(channel),
        health_stub=health_pb2_grpc.HealthStub(channel),
    )


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
