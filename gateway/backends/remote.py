"""Remote backends: encoder and LM services over gRPC, several replicas each.

A backend that fails (gone, cut mid-stream, silent past the stall timeout) reaches the client
as UNAVAILABLE with a sentence naming the service and its address, the transport's own words
after it. A backend's answer to the request itself (bad input, a full queue, the client's
deadline) travels on unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import grpc

from gateway.backends.base import EncoderBackend, LMBackend, LMInfo, LMRequest
from gateway.backends.lm_stream import NUM_CALLS, LMStreamMux, RequestOutputs, rpc_error
from gateway.backends.replicas import Replica, ReplicaSet, is_unavailable
from protos.channels import is_balanced
from protos.encoder_codec import encode_request_to_pb, encode_results_from_pb
from protos.errors import Unavailable
from protos.lm_codec import (
    lm_request_to_pb,
    pool_outputs_from_pb,
    pool_request_to_pb,
    step_from_pb,
)
from protos.lm_messages import StepOutput
from protos.meshserve.v1 import encoder_pb2_grpc, lm_pb2, lm_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

STALL_TIMEOUT_SECONDS = 30.0
# Codes that say the backend failed rather than answered; the client gets UNAVAILABLE.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,  # "Stream removed", a process gone mid-call
        grpc.StatusCode.CANCELLED,  # the backend's server stopped under the call
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
    }
)


class RemoteEncoderBackend(EncoderBackend):
    """One ReplicaSet of Encoder services per modality."""

    def __init__(
        self, targets: Mapping[str, Sequence[str]], stall_timeout: float = STALL_TIMEOUT_SECONDS
    ) -> None:
        self.sets = {
            modality: ReplicaSet(f"{modality} encoder", addrs, encoder_pb2_grpc.EncoderStub)
            for modality, addrs in targets.items()
        }
        self.stall_timeout = stall_timeout

    def modalities(self) -> frozenset[str]:
        return frozenset(self.sets)

    def start(self) -> None:
        for replica_set in self.sets.values():
            replica_set.start()

    def unavailable_services(self) -> tuple[str, ...]:
        return tuple(s.why_unavailable() for s in self.sets.values() if not s.is_healthy)

    async def encode(
        self, modality: str, items: Sequence[Any], timeout: float | None = None
    ) -> list[Any]:
        """Encodes on one replica; an UNAVAILABLE replica is retried once on another."""
        request = encode_request_to_pb(modality, items)

        async def send(replica: Replica, bound: float) -> Any:
            return encode_results_from_pb(await replica.stub.Encode(request, timeout=bound))

        return await call_unary(self.sets[modality], send, timeout, self.stall_timeout)

    async def close(self) -> None:
        for replica_set in self.sets.values():
            await replica_set.close()


class RemoteLMBackend(LMBackend):
    """LanguageModel service replicas; a request stays on the replica that took it.

    Args:
        stall_timeout: the longest a Generate stream may stay silent between two replies
            (and a Pool call may take) before it is failed as stalled.
    """

    def __init__(
        self, targets: Sequence[str], stall_timeout: float = STALL_TIMEOUT_SECONDS
    ) -> None:
        self.replicas = ReplicaSet("language model", targets, lm_pb2_grpc.LanguageModelStub)
        self.stall_timeout = stall_timeout
        self._muxes: dict[str, LMStreamMux] = {}  # replica target -> its GenerateStream calls

    def start(self) -> None:
        self.replicas.start()

    def unavailable_services(self) -> tuple[str, ...]:
        return () if self.replicas.is_healthy else (self.replicas.why_unavailable(),)

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
            replica = self.replicas.pick(only_healthy=False)
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
        """Streams one request over one of its replica's shared GenerateStream calls (one LM
        message per engine step for all of a call's requests); the client's deadline is
        enforced here, and a request given up on (deadline, stall, closed) is aborted."""
        message = lm_request_to_pb(request)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        tried: list[Replica] = []
        while True:
            replica = self.replicas.pick(exclude=tried)
            mux = self._muxes.get(replica.target) or self._mux(replica)
            outputs = mux.start(message)
            got_any = False
            try:
                while True:
                    output = await self._next(outputs, replica, deadline)
                    got_any = True
                    step = step_from_pb(request.request_id, output.step)
                    yield step
                    if step.finished:
                        return
            except grpc.aio.AioRpcError as exc:
                # Retrying is safe only before the first token reached the client. NOTE: a
                # local deadline or stall leaves outputs.is_done False: `end` aborts it.
                tried.append(replica)
                if got_any or not _retry(self.replicas, replica, exc, tried):
                    _raise_failure(self.replicas, replica, exc, got_any)
            finally:
                mux.end(request.request_id, outputs)  # aborts it on the LM if still running

    def _mux(self, replica: Replica) -> LMStreamMux:
        # NOTE: a plain HOST:PORT channel sends every call to one address (pick_first): more
        # calls would only split each engine step's message into several
        num_calls = NUM_CALLS if is_balanced(replica.target) else 1
        mux = self._muxes[replica.target] = LMStreamMux(replica.stub, num_calls)
        return mux

    async def _next(self, outputs: RequestOutputs, replica: Replica, deadline: float | None) -> Any:
        """The request's next output, within the stall timeout and the client's deadline."""
        try:
            return await outputs.next(self.stall_timeout, deadline)
        except TimeoutError:
            if outputs.deadline_passed():
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            raise Unavailable(
                f"the {self.replicas.service} service at {replica.target} sent nothing for "
                f"{self.stall_timeout:g}s (stalled; gateway --stall-timeout); the request was "
                "abandoned, retry shortly"
            ) from None

    async def pool(
        self, task: str, inputs: Sequence[Any], timeout: float | None = None
    ) -> list[Any]:
        """One Pool call on one replica; an UNAVAILABLE replica is retried once on another."""
        message = pool_request_to_pb(task, inputs)

        async def send(replica: Replica, bound: float) -> list[Any]:
            return pool_outputs_from_pb(await replica.stub.Pool(message, timeout=bound))

        return await call_unary(self.replicas, send, timeout, self.stall_timeout)

    async def close(self) -> None:
        for mux in self._muxes.values():
            await mux.close()
        await self.replicas.close()


async def call_unary(
    replicas: ReplicaSet,
    send: Callable[[Replica, float], Awaitable[T]],
    timeout: float | None,
    stall_timeout: float,
) -> T:
    """`send` on a healthy replica with the client's deadline, at most the stall timeout;
    UNAVAILABLE is retried once on another healthy replica."""
    is_stall_bound = timeout is None or stall_timeout < timeout
    bound = stall_timeout if is_stall_bound else timeout
    tried: list[Replica] = []
    while True:
        replica = replicas.pick(exclude=tried)
        try:
            return await send(replica, bound)
        except grpc.aio.AioRpcError as exc:
            tried.append(replica)
            if _retry(replicas, replica, exc, tried):
                continue
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and is_stall_bound:
                raise Unavailable(
                    f"the {replicas.service} service at {replica.target} did not answer within "
                    f"{stall_timeout:g}s (stalled; gateway --stall-timeout); retry shortly"
                ) from exc
            _raise_failure(replicas, replica, exc)


def _retry(replicas: ReplicaSet, replica: Replica, exc: grpc.aio.AioRpcError, tried: list) -> bool:
    """Whether to try again elsewhere: once, after UNAVAILABLE, if a healthy replica is left."""
    if not is_unavailable(exc):
        return False
    replicas.mark_down(replica)
    return len(tried) == 1 and replicas.has_healthy(exclude=tried)


def _raise_failure(
    replicas: ReplicaSet, replica: Replica, exc: grpc.aio.AioRpcError, mid_stream: bool = False
) -> NoReturn:
    """UNAVAILABLE with a sentence for a backend that failed; its own answer otherwise."""
    if exc.code() not in FAILURE_CODES:
        raise exc
    stage = "failed mid-stream" if mid_stream else "failed"
    raise Unavailable(
        f"the {replicas.service} service at {replica.target} {stage}; retry shortly "
        f"({exc.code().name}: {exc.details()})"
    ) from exc
