"""The public Gateway gRPC servicer (grpc.aio): thin, proto <-> orchestrator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc
from prometheus_client import CollectorRegistry

from gateway.api.grpc_convert import (
    chat_from_pb,
    chunk_to_pb,
    client_sampling_from_pb,
    generate_from_pb,
    media_from_pb,
)
from gateway.pipeline.orchestrator import Orchestrator
from gateway.pipeline.pooling import (
    MediaPrompt,
    PoolingOrchestrator,
    Prompt,
    require_generate,
)
from gateway.pipeline.transcription import Transcriber, TranscriptionRequest
from gateway.pipeline.types import GenerationRequest, Usage
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from protos.metrics import StreamMetrics

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """meshserve.v1.Gateway over one orchestrator.

    Args:
        metrics: where Generate and Chat streams are timed and counted (default: a registry
            of this servicer's own).
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        model_impl: str = "",
        max_model_len: int = 0,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.model_impl = model_impl
        self.max_model_len = max_model_len
        self.metrics = metrics if metrics is not None else StreamMetrics(CollectorRegistry())
        self._pooling: PoolingOrchestrator | None = None

    @property
    def pooling(self) -> PoolingOrchestrator:
        if self._pooling is None:
            self._pooling = PoolingOrchestrator.of(self.orchestrator)
        return self._pooling

    def _require_generate(self) -> None:
        require_generate(self.orchestrator.served)

    # NOTE: Generate and Chat write their replies (context.write) rather than yield them: a
    # servicer async generator is one more generator level per token under each of the
    # wrappers protos.status adds, resumed twice per reply.
    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        self._require_generate()
        generation = generate_from_pb(request, context.time_remaining())
        await _write_replies(self.orchestrator, generation, self.metrics, context)

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> None:
        self._require_generate()
        generation = chat_from_pb(request, context.time_remaining())
        await _write_replies(self.orchestrator, generation, self.metrics, context)

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

    async def Embed(
        self, request: gateway_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EmbedResponse:
        normalize = request.normalize if request.HasField("normalize") else None
        result = await self.pooling.embed(
            _pooling_prompts(request.inputs), normalize, context.time_remaining()
        )
        return gateway_pb2.EmbedResponse(
            embeddings=[gateway_pb2.Embedding(values=o.data.tolist()) for o in result.outputs],
            usage=_usage_to_pb(result.usage),
        )

    async def Classify(
        self, request: gateway_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ClassifyResponse:
        results, pooled = await self.pooling.classify(
            _pooling_prompts(request.inputs), context.time_remaining()
        )
        return gateway_pb2.ClassifyResponse(
            results=[
                gateway_pb2.Classification(probs=r.probs, label_index=r.label_index, label=r.label)
                for r in results
            ],
            usage=_usage_to_pb(pooled.usage),
        )

    async def Score(
        self, request: gateway_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ScoreResponse:
        result = await self.pooling.score(
            [request.text_1] if request.text_1 else [],
            list(request.text_2),
            context.time_remaining(),
        )
        return gateway_pb2.ScoreResponse(scores=result.scores, usage=_usage_to_pb(result.usage))

    async def Transcribe(
        self, request: gateway_pb2.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        chunks = Transcriber.of(self.orchestrator).transcribe(
            _transcription_from_pb(request, context.time_remaining())
        )
        with self.metrics.stream() as tracker:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    tracker.on_tokens(len(chunk.token_ids), chunk.finish_reason)
                    yield chunk_to_pb(chunk)


def _transcription_from_pb(
    request: gateway_pb2.TranscribeRequest, timeout: float | None
) -> TranscriptionRequest:
    return TranscriptionRequest(
        request_id=request.request_id,
        audio=request.audio,
        sampling_params=client_sampling_from_pb(request.sampling),
        language=request.language or None,
        task=request.task or "transcribe",
        timeout=timeout,
    )


def _pooling_prompts(inputs: Sequence[gateway_pb2.PoolingInput]) -> list[Prompt]:
    """Pooling inputs: a text, or a text with media (checked by the model's rule later)."""
    prompts: list[Prompt] = []
    for item in inputs:
        if not item.media:
            prompts.append(item.text)
            continue
        media = tuple(media_from_pb(i, m) for i, m in enumerate(item.media))
        prompts.append(MediaPrompt(item.text, media))
    return prompts


def _usage_to_pb(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


async def _write_replies(
    orchestrator: Orchestrator,
    request: GenerationRequest,
    metrics: StreamMetrics,
    context: grpc.aio.ServicerContext,
) -> None:
    """Writes the stream's replies; the client gone (this task cancelled) closes the LM stream
    at once, not at GC."""
    with metrics.stream() as tracker:
        async with contextlib.aclosing(orchestrator.generate(request)) as chunks:
            async for chunk in chunks:
                tracker.on_tokens(len(chunk.token_ids), chunk.finish_reason)
                await context.write(chunk_to_pb(chunk))
