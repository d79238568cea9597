"""The LanguageModel gRPC servicer: thin, proto <-> engine loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry

from lm_service.engine_loop import EngineLoop
from lm_service.metrics import lm_metrics
from lm_service.stream_connection import DuplicateRequestId, StreamConnection
from protos.errors import Unavailable, Unsupported
from protos.lm_codec import (
    cross_windows_from_pb,
    encoder_states_from_pb,
    mrope_from_pb,
    pool_inputs_from_pb,
    pool_outputs_to_pb,
    pooling_task_from_pb,
    sampling_from_pb,
    spans_from_pb,
    step_to_pb,
    stream_items_to_pb,
)
from protos.meshserve.v1 import lm_pb2, lm_pb2_grpc
from protos.metrics import RequestTracker, StreamMetrics

if TYPE_CHECKING:
    from lm_service.engine.scheduler import SchedulerStats
    from lm_service.pooling import PoolingModel

logger = logging.getLogger(__name__)

SERVICE_NAME = lm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name


class LanguageModelServicer(lm_pb2_grpc.LanguageModelServicer):
    """Registered before the model loads (so health answers early); `attach` makes it live.

    A generation LM attaches an engine loop; a pooling LM (`--task embed|classify|score|reward`)
    attaches a PoolingModel instead, and then answers Pool only.
    """

    def __init__(
        self,
        model_name: str,
        loop: EngineLoop | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.model_name = model_name
        self._loop = loop
        self._pooling: PoolingModel | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = lm_metrics(self.registry, self._engine_stats)

    def _engine_stats(self) -> SchedulerStats | None:
        loop = self._loop
        return None if loop is None else loop.engine.scheduler.stats

    def attach(self, loop: EngineLoop) -> None:
        self._loop = loop

    def attach_pooling(self, model: PoolingModel) -> None:
        self._pooling = model

    def close(self) -> None:
        """Stops the attached engine loop or pooling model (after the server drained)."""
        if self._loop is not None:
            self._loop.stop()
        if self._pooling is not None:
            self._pooling.close()

    @property
    def loop(self) -> EngineLoop:
        if self._pooling is not None:
            raise Unsupported(
                f"this LM serves {self.model_name} for the {self._pooling.task.value!r} task; "
                "Generate needs an LM started with --task generate"
            )
        if self._loop is None:
            raise Unavailable(f"{self.model_name} is still loading; retry when health is SERVING")
        return self._loop

    @property
    def pooling(self) -> PoolingModel:
        if self._pooling is not None:
            return self._pooling
        if self._loop is not None:
            raise Unsupported(
                f"this LM serves {self.model_name} for the 'generate' task; Pool needs an LM "
                "started with --task embed, classify, score or reward"
            )
        raise Unavailable(f"{self.model_name} is still loading; retry when health is SERVING")

    async def Generate(
        self, request: lm_pb2.LMGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lm_pb2.LMGenerateResponse]:
        # One request on a StreamConnection of its own: GenerateStream's admission, abort and
        # metrics. A cancelled client or an expired deadline cancels this task: the finally
        # aborts the request and frees its KV blocks.
        request_id = request.request_id or uuid.uuid4().hex
        args = _engine_args(request)  # a bad message raises its status before anything runs
        connection = StreamConnection(self.loop, asyncio.get_running_loop())
        trackers = StreamTrackers(self.metrics)
        trackers.open(request_id)
        try:
            connection.add(request_id, *args)
            connection.close_input()
            while (items := await connection.next_items()) is not None:
                trackers.on_items(items)
                outputs = [item for _, item in items]
                for item in outputs:
                    if isinstance(item, BaseException):
                        raise item
                yield step_to_pb(outputs)
        finally:
            connection.abort_all()
            trackers.close()

    async def GenerateStream(
        self, requests: AsyncIterator[lm_pb2.LMStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lm_pb2.LMStreamResponse]:
        # One message per engine step for all of this stream's requests; the stream closing
        # (the gateway gone, cancelled) aborts every request still running on it.
        connection = StreamConnection(self.loop, asyncio.get_running_loop())
        trackers = StreamTrackers(self.metrics)
        reader = asyncio.create_task(_read_stream_requests(requests, connection, trackers))
        try:
            while (items := await connection.next_items()) is not None:
                trackers.on_items(items)
                yield stream_items_to_pb(items)
        finally:
            reader.cancel()
            connection.abort_all()
            trackers.close()

    async def Pool(
        self, request: lm_pb2.PoolRequest, context: grpc.aio.ServicerContext
    ) -> lm_pb2.PoolResponse:
        # the model's micro-batcher joins the inputs of concurrent calls
        task = pooling_task_from_pb(request.task)
        inputs = pool_inputs_from_pb(request.inputs)
        return pool_outputs_to_pb(await asyncio.to_thread(self.pooling.pool, task, inputs))

    async def GetInfo(
        self, request: lm_pb2.GetLMInfoRequest, context: grpc.aio.ServicerContext
    ) -> lm_pb2.LMInfo:
        if self._pooling is not None:
            return _pooling_info(self.model_name, self._pooling)
        engine = self.loop.engine
        return lm_pb2.LMInfo(
            model=self.model_name,
            architecture=engine.loaded.architecture,
            model_impl=engine.loaded.impl_name,
            max_model_len=engine.max_model_len,
            block_size=engine.config.block_size,
            num_blocks=engine.num_blocks,
            vocab_size=engine.vocab_size,
            hidden_size=engine.hidden_size,
            dtype=engine.config.dtype,
            uses_mrope=engine.runner.uses_mrope,
            tasks=list(engine.tasks),
        )

    async def GetLoad(
        self, request: lm_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> lm_pb2.LoadInfo:
        if self._pooling is not None:
            return lm_pb2.LoadInfo()  # no KV cache, no scheduler queue
        return await asyncio.to_thread(self.loop.call, _load_info)


async def _read_stream_requests(
    requests: AsyncIterator[lm_pb2.LMStreamRequest],
    connection: StreamConnection,
    trackers: StreamTrackers,
) -> None:
    """Adds and aborts as they come; a bad request fails alone, the stream goes on."""
    try:
        async for message in requests:
            if message.WhichOneof("action") == "abort_request_id":
                connection.abort(message.abort_request_id)
                continue
            request = message.generate
            if connection.is_live(request.request_id):  # refused before it touches anything
                connection.refuse(request.request_id, DuplicateRequestId(request.request_id))
                continue
            trackers.open(request.request_id)
            try:
                args = _engine_args(request)
            except Exception as exc:  # noqa: BLE001 - this request's status only
                connection.refuse(request.request_id, exc)
                continue
            connection.add(request.request_id, *args)
    except Exception as exc:  # noqa: BLE001 - e.g. bytes that are no LMStreamRequest
        connection.fail(exc)
    finally:
        connection.close_input()


def _engine_args(request: lm_pb2.LMGenerateRequest) -> tuple:
    """StreamConnection.add's arguments after the request id; a bad field raises its status."""
    return (
        list(request.prompt_token_ids),
        sampling_from_pb(request.sampling),
        spans_from_pb(request.mm_spans),
        mrope_from_pb(request),
        encoder_states_from_pb(request),
        cross_windows_from_pb(request),
    )


class StreamTrackers:
    """The metrics of each request of one GenerateStream, as Generate keeps them."""

    def __init__(self, metrics: StreamMetrics) -> None:
        self._metrics = metrics
        self._open: dict[str, tuple[contextlib.AbstractContextManager, RequestTracker]] = {}

    def open(self, request_id: str) -> None:
        """The request arrived: its time to first token starts now."""
        scope = self._metrics.stream()
        self._open[request_id] = (scope, scope.__enter__())

    def on_items(self, items: list[tuple[str, object]]) -> None:
        for request_id, item in items:
            entry = self._open.get(request_id)
            # NOTE: a refused duplicate's id names another request, whose tracker goes on
            if entry is None or isinstance(item, DuplicateRequestId):
                continue  # e.g. the "abort" output of a request already ended
            if isinstance(item, BaseException):
                entry[1].discard()
            else:
                entry[1].on_tokens(len(item.new_token_ids), item.finish_reason)
                if not item.finished:
                    continue
            self._open.pop(request_id)[0].__exit__(None, None, None)

    def close(self) -> None:
        """The stream ended: requests still open count as aborted."""
        for scope, _ in self._open.values():
            scope.__exit__(None, None, None)
        self._open.clear()


def _pooling_info(model_name: str, model: PoolingModel) -> lm_pb2.LMInfo:
    return lm_pb2.LMInfo(
        model=model_name,
        architecture=model.architecture,
        model_impl="transformers",
        max_model_len=model.max_model_len,
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        dtype=model.config.dtype,
        tasks=[model.task.value],
    )


def _load_info(engine: object) -> lm_pb2.LoadInfo:
    scheduler = engine.scheduler
    pool = scheduler.block_pool
    stats = scheduler.stats
    return lm_pb2.LoadInfo(
        num_running=scheduler.num_running,
        num_waiting=scheduler.num_waiting,
        kv_cache_usage=pool.usage,
        num_free_blocks=pool.num_free_blocks,
        num_blocks=engine.num_blocks,
        num_preemptions=stats.num_preemptions,
        prefix_cache_hit_rate=stats.prefix_cache_hit_rate,
    )
