"""Remote backends: encoder and LM services over gRPC, several replicas each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from gateway.backends.base import EncoderBackend, LMBackend, LMInfo, LMRequest
from gateway.backends.replicas import Replica, ReplicaSet, is_unavailable
from protos.encoder_codec import encode_request_to_pb, encode_results_from_pb
from protos.lm_codec import (
    lm_request_to_pb,
    pool_outputs_from_pb,
    pool_request_to_pb,
    step_from_pb,
)
from protos.lm_messages import StepOutput
from protos.meshserve.v1 import encoder_pb2_grpc, lm_pb2, lm_pb2_grpc

logger = logging.getLogger(__name__)


class RemoteEncoderBackend(EncoderBackend):
    """One ReplicaSet of Encoder services per modality."""

    def __init__(self, targets: Mapping[str, Sequence[str]]) -> None:
        self.sets = {
            modality: ReplicaSet(f"{modality} encoder", addrs, encoder_pb2_grpc.EncoderStub)
            for modality, addrs in targets.items()
        }

    def modalities(self) -> frozenset[str]:
        return frozenset(self.sets)

    def start(self) -> None:
        for replica_set in self.sets.values():
            replica_set.start()

    async def encode(
        self, modality: str, items: Sequence[Any], timeout: float | None = None
    ) -> list[Any]:
        """Encodes on one replica; an UNAVAILABLE replica is retried once on another."""
        replica_set = self.sets[modality]
        request = encode_request_to_pb(modality, items)
        tried: list[Replica] = []
        while True:
            replica = replica_set.pick(exclude=tried)
            try:
                reply = await replica.stub.Encode(request, timeout=timeout)
                return encode_results_from_pb(reply)
            except grpc.aio.AioRpcError as exc:
                if not is_unavailable(exc) or len(tried) >= 1:
                    raise
                replica_set.mark_down(replica)
                tried.append(replica)

    async def close(self) -> None:
        for replica_set in self.sets.values():
            await replica_set.close()


class RemoteLMBackend(LMBackend):
    """LanguageModel service replicas; a request stays on the replica that took it."""

    def __init__(self, targets: Sequence[str]) -> None:
        self.replicas = ReplicaSet("lm", targets, lm_pb2_grpc.LanguageModelStub)

    def start(self) -> None:
        self.replicas.start()

    async def info(self, wait_seconds: float = 600.0) -> LMInfo:
        """The LM's description; waits (up to `wait_seconds`) for a replica still loading."""
        reply = await self._get_info(wait_seconds)
        return LMInfo(
            architecture=reply.architecture,
            model_impl=reply.model_impl,
            max_model_len=reply.max_model_len,
            hidden_size=reply.hidden_size,
            vocab_size=reply.vocab_size,
            uses_mrope=reply.uses_mrope,
            block_size=reply.block_size,
            num_blocks=reply.num_blocks,
            tasks=tuple(reply.tasks) or ("generate",),
        )

    async def _get_info(self, wait_seconds: float) -> lm_pb2.LMInfo:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            replica = self.replicas.pick()
            try:
                return await replica.stub.GetInfo(
                    lm_pb2.GetLMInfoRequest(), timeout=10, wait_for_ready=True
                )
            except grpc.aio.AioRpcError as exc:
                if not is_unavailable(exc) and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                if loop.time() > deadline:
                    raise
                logger.info("waiting for the LM at %s: %s", replica.target, exc.details())
                await asyncio.sleep(1.0)

    async def generate(
        self, request: LMRequest, timeout: float | None = None
    ) -> AsyncIterator[StepOutput]:
        message = lm_request_to_pb(request)
        tried: list[Replica] = []
        while True:
            replica = self.replicas.pick(exclude=tried)
            call = replica.stub.Generate(message, timeout=timeout)
            got_any = False
            try:
                async for reply in call:
                    got_any = True
                    yield step_from_pb(request.request_id, reply)
                return
            except grpc.aio.AioRpcError as exc:
                # Retrying is safe only before the first token reached the client.
                if got_any or not is_unavailable(exc) or tried:
                    raise
                self.replicas.mark_down(replica)
                tried.append(replica)
            finally:
                call.cancel()  # no-op when done; frees the LM's blocks when we stop early

    async def pool(
        self, task: str, inputs: Sequence[Any], timeout: float | None = None
    ) -> list[Any]:
        """One Pool call on one replica; an UNAVAILABLE replica is retried once on another."""
        message = pool_request_to_pb(task, inputs)
        tried: list[Replica] = []
        while True:
            replica = self.replicas.pick(exclude=tried)
            try:
                return pool_outputs_from_pb(await replica.stub.Pool(message, timeout=timeout))
            except grpc.aio.AioRpcError as exc:
                if not is_unavailable(exc) or tried:
                    raise
                self.replicas.mark_down(replica)
                tried.append(replica)

    async def close(self) -> None:
        await self.replicas.close()
