"""Health-aware round robin over the replicas of one backend service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.channels import channel_options
from protos.errors import Unavailable

logger = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Replica:
    target: str
    channel: grpc.aio.Channel
    stub: Any
    healthy: bool = True
    num_calls: int = 0
    health: Any = field(default=None, repr=False)


class ReplicaSet:
    """Picks replicas in turn, skipping those whose health is not SERVING.

    A `dns:///name:port` target is one replica here: gRPC resolves every address behind the
    name and balances over them itself (round_robin), re-resolving as replicas come and go.
    """

    def __init__(
        self,
        name: str,
        targets: Sequence[str],
        make_stub: Callable[[grpc.aio.Channel], Any],
        health_interval: float = 1.0,
    ) -> None:
        if not targets:
            raise ValueError(f"no address given for the {name} service")
        self.name = name
        self.targets = tuple(targets)
        self._make_stub = make_stub
        self._replicas: list[Replica] = []
        self.health_interval = health_interval
        self._next = 0
        self._watcher: asyncio.Task[None] | None = None

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
        """Starts the background health checks (needs a running event loop)."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for replica in self._replicas:
            await replica.channel.close()

    def pick(self, exclude: Sequence[Replica] = ()) -> Replica:
        """The next healthy replica; when none looks healthy, the next one not excluded."""
        candidates = [r for r in self.replicas if r not in exclude]
        if not candidates:
            raise Unavailable(f"every {self.name} replica failed; try again later")
        healthy = [r for r in candidates if r.healthy] or candidates
        replica = healthy[self._next % len(healthy)]
        self._next += 1
        replica.num_calls += 1
        return replica

    def mark_down(self, replica: Replica) -> None:
        if replica.healthy:
            logger.warning("%s replica %s is unavailable", self.name, replica.target)
        replica.healthy = False

    async def _watch(self) -> None:
        while True:
            await asyncio.gather(*(self._check(r) for r in self.replicas))
            await asyncio.sleep(self.health_interval)

    async def _check(self, replica: Replica) -> None:
        try:
            reply = await replica.health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
            healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            healthy = False
        if healthy != replica.healthy:
            logger.info(
                "%s replica %s is %s",
                self.name,
                replica.target,
                "SERVING" if healthy else "not serving",
            )
        replica.healthy = healthy


def _replica(target: str, make_stub: Callable[[grpc.aio.Channel], Any]) -> Replica:
    channel = grpc.aio.insecure_channel(target, options=channel_options(target))
    return Replica(
        target=target,
        channel=channel,
        stub=make_stub(channel),
        health=health_pb2_grpc.HealthStub(channel),
    )


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
