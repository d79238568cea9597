"""The LanguageModel gRPC servicer: thin, proto <-> engine loop."""

from __future__ import annotations

import logging
import queue
import uuid
from collections.abc import Iterator

import grpc

from lm_service.engine_loop import EngineLoop
from lm_service.wire import mrope_from_pb, sampling_from_pb, spans_from_pb, step_to_pb
from protos.errors import Unavailable, Unsupported
from protos.meshserve.v1 import lm_pb2, lm_pb2_grpc
from protos.status import grpc_errors

logger = logging.getLogger(__name__)

SERVICE_NAME = lm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name
_POLL_SECONDS = 0.25  # how often a waiting stream checks that its client is still there


class LanguageModelServicer(lm_pb2_grpc.LanguageModelServicer):
    """Registered before the model loads (so health answers early); `attach` makes it live."""

    def __init__(self, model_name: str, loop: EngineLoop | None = None) -> None:
        self.model_name = model_name
        self._loop = loop

    def attach(self, loop: EngineLoop) -> None:
        self._loop = loop

    @property
    def loop(self) -> EngineLoop:
        if self._loop is None:
            raise Unavailable(f"{self.model_name} is still loading; retry when health is SERVING")
        return self._loop

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
        raise Unsupported("pooling tasks are not served by this LM service yet")

    @grpc_errors
    def GetInfo(
        self, request: lm_pb2.GetLMInfoRequest, context: grpc.ServicerContext
    ) -> lm_pb2.LMInfo:
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
        return self.loop.call(_load_info)


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
