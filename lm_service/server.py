"""The LanguageModel gRPC servicer: thin, proto <-> engine loop."""

from __future__ import annotations

import logging
import queue
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from lm_service.engine_loop import EngineLoop
from lm_service.wire import (
    mrope_from_pb,
    pool_inputs_from_pb,
    pool_outputs_to_pb,
    pooling_task_from_pb,
    sampling_from_pb,
    spans_from_pb,
    step_to_pb,
)
from protos.errors import Unavailable, Unsupported
from protos.meshserve.v1 import lm_pb2, lm_pb2_grpc
from protos.status import grpc_errors

if TYPE_CHECKING:
    from lm_service.pooling import PoolingModel

logger = logging.getLogger(__name__)

SERVICE_NAME = lm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name
_POLL_SECONDS = 0.25  # how often a waiting stream checks that its client is still there


class LanguageModelServicer(lm_pb2_grpc.LanguageModelServicer):
    """Registered before the model loads (so health answers early); `attach` makes it live.

    A generation LM attaches an engine loop; a pooling LM (`--task embed|classify|score|reward`)
    attaches a PoolingModel instead, and then answers Pool only.
    """

    def __init__(self, model_name: str, loop: EngineLoop | None = None) -> None:
        self.model_name = model_name
        self._loop = loop
        self._pooling: PoolingModel | None = None

    def attach(self, loop: EngineLoop) -> None:
        self._loop = loop

    def attach_pooling(self, model: PoolingModel) -> None:
        self._pooling = model

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

    @grpc_errors
    def Generate(
        self, request: lm_pb2.LMGenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[lm_pb2.LMGenerateResponse]:
        request_id = request.request_id or uuid.uuid4().hex
        stream = self.loop.submit(
            request_id,
            list(request.prompt_token_ids),
            sampling_from_pb(request.sampling),
            spans_from_pb(request.mm_spans),
            mrope_from_pb(request),
        )
        # Fires on cancel, on deadline and on normal end; aborting a finished request is a no-op.
        context.add_callback(lambda: self.loop.abort(request_id))
        while context.is_active():
            try:
                first = stream.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            outputs = [first, *stream.drain()]
            yield step_to_pb(outputs)
            if outputs[-1].finished:
                return

    @grpc_errors
    def Pool(
        self, request: lm_pb2.PoolRequest, context: grpc.ServicerContext
    ) -> lm_pb2.PoolResponse:
        # gRPC runs each call in its own thread; the model's micro-batcher joins concurrent calls.
        task = pooling_task_from_pb(request.task)
        return pool_outputs_to_pb(self.pooling.pool(task, pool_inputs_from_pb(request.inputs)))

    @grpc_errors
    def GetInfo(
        self, request: lm_pb2.GetLMInfoRequest, context: grpc.ServicerContext
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
            tasks=["generate"],
        )

    @grpc_errors
    def GetLoad(
        self, request: lm_pb2.GetLoadRequest, context: grpc.ServicerContext
    ) -> lm_pb2.LoadInfo:
        if self._pooling is not None:
            return lm_pb2.LoadInfo()  # no KV cache, no scheduler queue
        return self.loop.call(_load_info)


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
