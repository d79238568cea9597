"""In-process backends: encoders and an engine loop (or a pooling model) in this process.

The cores are imported lazily: a gateway with only remote backends never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from gateway.backends.base import EncoderBackend, LMBackend, LMInfo, LMRequest
from protos.errors import Unsupported
from protos.lm_messages import StepOutput

if TYPE_CHECKING:
    from lm_service.engine_loop import EngineLoop


class LocalEncoderBackend(EncoderBackend):
    """In-process encoders, one `encoder_service.Encoder` per modality."""

    def __init__(self, encoders: dict[str, Any]) -> None:
        self.encoders = encoders

    def modalities(self) -> frozenset[str]:
        return frozenset(self.encoders)

    async def encode(
        self, modality: str, items: Sequence[Any], timeout: float | None = None
    ) -> list[Any]:
        work = asyncio.to_thread(self.encoders[modality].encode, list(items))
        return await asyncio.wait_for(work, timeout)


class LocalLMBackend(LMBackend):
    """An in-process engine loop, or an in-process pooling model (`pooling`) instead."""

    def __init__(self, loop: EngineLoop | None = None, pooling: Any = None) -> None:
        self.loop = loop
        self.pooling = pooling  # lm_service.pooling.PoolingModel

    async def info(self) -> LMInfo:
        if self.pooling is not None:
            return _pooling_info(self.pooling)
        engine = self.loop.engine
        return LMInfo(
            architecture=engine.loaded.architecture,
            model_impl=engine.loaded.impl_name,
            max_model_len=engine.max_model_len,
            hidden_size=engine.hidden_size,
            vocab_size=engine.vocab_size,
            uses_mrope=engine.runner.uses_mrope,
            block_size=engine.config.block_size,
            num_blocks=engine.num_blocks,
            tasks=engine.tasks,
        )

    async def generate(
        self, request: LMRequest, timeout: float | None = None
    ) -> AsyncIterator[StepOutput]:
        if self.loop is None:
            raise Unsupported(
                f"this LM serves the {self.pooling.task.value!r} task; Generate needs task "
                "'generate'"
            )
        from lm_service.engine_loop import stream_outputs

        outputs_stream = stream_outputs(
            self.loop,
            request.request_id,
            request.prompt_token_ids,
            request.sampling_params,
            request.mm_spans,
            request.mrope_positions,
            timeout,
            encoder_states=request.encoder_states,
            cross_windows=request.cross_windows,
        )
        # aclosing: when our caller stops early, the inner stream must abort now, not at GC
        async with contextlib.aclosing(outputs_stream):
            async for outputs in outputs_stream:
                for out in outputs:
                    yield out

    async def pool(
        self, task: str, inputs: Sequence[Any], timeout: float | None = None
    ) -> list[torch.Tensor]:
        if self.pooling is None:
            return await super().pool(task, inputs, timeout)
        work = asyncio.to_thread(self.pooling.pool, task, list(inputs))
        return await asyncio.wait_for(work, timeout)

    async def close(self) -> None:
        if self.pooling is not None:
            await asyncio.to_thread(self.pooling.close)
        if self.loop is not None:
            await asyncio.to_thread(self.loop.stop)


def _pooling_info(model: Any) -> LMInfo:
    return LMInfo(
        architecture=model.architecture,
        model_impl="transformers",
        max_model_len=model.max_model_len,
        hidden_size=model.hidden_size,
        vocab_size=model.vocab_size,
        uses_mrope=False,
        block_size=0,
        num_blocks=0,
        tasks=(model.task.value,),
    )
