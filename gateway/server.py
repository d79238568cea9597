"""The public Gateway gRPC servicer (grpc.aio): thin, proto <-> orchestrator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway.orchestrator import Orchestrator
from gateway.wire import chat_from_pb, chunk_to_pb, generate_from_pb, media_from_pb
from protos.errors import Unsupported
from protos.meshserve.v1 import gateway_pb2, gateway_pb2_grpc
from protos.status import aio_grpc_errors

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self, orchestrator: Orchestrator, model_impl: str = "", max_model_len: int = 0
    ) -> None:
        self.orchestrator = orchestrator
        self.model_impl = model_impl
        self.max_model_len = max_model_len

    @aio_grpc_errors
    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        async for chunk in self.orchestrator.generate(
            generate_from_pb(request, context.time_remaining())
        ):
            yield chunk_to_pb(chunk)

    @aio_grpc_errors
    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        async for chunk in self.orchestrator.generate(
            chat_from_pb(request, context.time_remaining())
        ):
            yield chunk_to_pb(chunk)

    @aio_grpc_errors
    async def PutMedia(
        self, request: gateway_pb2.PutMediaRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.PutMediaResponse:
        item = media_from_pb(0, request.media)
        handle, result = await self.orchestrator.put_media(item, context.time_remaining())
        grid = result.metadata.get("grid_thw") or ()
        return gateway_pb2.PutMediaResponse(
            handle=handle,
            num_tokens=int(result.num_tokens),
            cache_hit=bool(result.cache_hit),
            grid_thw=[int(g) for g in grid],
        )

    @aio_grpc_errors
    async def GetModelInfo(
        self, request: gateway_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ModelInfo:
        served = self.orchestrator.served
        return gateway_pb2.ModelInfo(
            model=served.model,
            architecture=served.architecture,
            tasks=[served.task],
            modality_spec=str(served.spec),
            limit_mm_per_prompt={k: int(v) for k, v in served.limits.items() if v > 0},
            max_model_len=self.max_model_len,
            model_impl=self.model_impl,
        )

    @aio_grpc_errors
    async def Embed(
        self, request: gateway_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EmbedResponse:
        raise self._not_served("embed")

    @aio_grpc_errors
    async def Classify(
        self, request: gateway_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ClassifyResponse:
        raise self._not_served("classify")

    @aio_grpc_errors
    async def Score(
        self, request: gateway_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ScoreResponse:
        raise self._not_served("score")

    @aio_grpc_errors
    async def Transcribe(
        self, request: gateway_pb2.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        raise self._not_served("transcription")
        yield  # an async generator, like the other streams

    def _not_served(self, task: str) -> Unsupported:
        served = self.orchestrator.served
        return Unsupported(
            f"this gateway serves {served.model} ({served.architecture}) for the "
            f"{served.task!r} task; {task!r} is not available"
        )
