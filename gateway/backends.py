"""How the orchestrator reaches encoders and the LM: two small interfaces, local versions.

The remote (gRPC, replicated) versions live in `gateway.remote`. Orchestration code is
written once against these interfaces.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lm_service.engine.outputs import StepOutput
from lm_service.engine.request import MultiModalSpan
from lm_service.engine_loop import EngineLoop, stream_outputs
from lm_service.sampling_params import SamplingParams
from protos.errors import Unsupported


@dataclass(frozen=True, slots=True)
class LMRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    mm_spans: tuple[MultiModalSpan, ...] = ()
    mrope_positions: torch.Tensor | None = None  # [3, num_prompt_tokens]


@dataclass(frozen=True, slots=True)
class LMInfo:
    architecture: str
    model_impl: str
    max_model_len: int
    hidden_size: int
    vocab_size: int
    uses_mrope: bool
    block_size: int
    num_blocks: int
    tasks: tuple[str, ...] = ("generate",)


class EncoderBackend(abc.ABC):
    """Turns media items of one modality into LM-space embeddings."""

    @abc.abstractmethod
    def modalities(self) -> frozenset[str]:
        """Modalities this backend can encode."""

    @abc.abstractmethod
    async def encode(
        self, modality: str, items: Sequence[Any], timeout: float | None = None
    ) -> list[Any]:
        """encoder_service.MediaItem list -> encoder_service.EncodeResult list, same order."""

    async def close(self) -> None:
        """Releases channels; local backends have nothing to release."""


class LMBackend(abc.ABC):
    """Streams the tokens of one request from a language model."""

    @abc.abstractmethod
    async def info(self) -> LMInfo: ...

    @abc.abstractmethod
    def generate(
        self, request: LMRequest, timeout: float | None = None
    ) -> AsyncIterator[StepOutput]:
        """Yields step outputs until one is finished. Closing the iterator early aborts the
        request and frees its KV blocks."""

    async def pool(
        self, task: str, inputs: Sequence[Any], timeout: float | None = None
    ) -> list[torch.Tensor]:
        """lm_service.pooling.PoolingInput list -> one float32 tensor per input, same order:
        embed [hidden], classify [num_labels], score [1], reward [rows, D] or [D]."""
        raise Unsupported(f"this LM backend does not serve pooling tasks such as {task!r}")

    async def close(self) -> None:
        """Releases channels; local backends have nothing to release."""


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
        )

    async def generate(
        self, request: LMRequest, timeout: float | None = None
    ) -> AsyncIterator[StepOutput]:
        if self.loop is None:
            raise Unsupported(
                f"this LM serves the {self.pooling.task.value!r} task; Generate needs task "
                "'generate'"
            )
        outputs_stream = stream_outputs(
            self.loop,
            request.request_id,
            request.prompt_token_ids,
            request.sampling_params,
            request.mm_spans,
            request.mrope_positions,
            timeout,
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
