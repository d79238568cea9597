"""How the orchestrator reaches encoders and the LM: two small interfaces and their messages.

The in-process versions live in `gateway.backends.local`, the gRPC (replicated) ones in
`gateway.backends.remote`. Orchestration code is written once against these interfaces.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from protos.cross_windows import CrossWindow
from protos.errors import Unsupported
from protos.lm_messages import MultiModalSpan, StepOutput
from protos.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class LMRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    mm_spans: tuple[MultiModalSpan, ...] = ()
    mrope_positions: torch.Tensor | None = None  # [3, num_prompt_tokens]
    encoder_states: torch.Tensor | None = None  # [num_encoder_tokens, hidden]: cross-attention
    cross_windows: tuple[CrossWindow, ...] = ()  # which states each token attends (Mllama)


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
        """protos.encoder_messages.MediaItem list -> protos.encoder_messages.EncodeResult list, same order."""

    def unavailable_services(self) -> tuple[str, ...]:
        """A sentence for each modality with no healthy replica; () while all can encode
        (always, in process)."""
        return ()

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
        """protos.lm_messages.PoolingInput list -> one float32 tensor per input, same order:
        embed [hidden], classify [num_labels], score [1], reward [rows, D] or [D]."""
        raise Unsupported(f"this LM backend does not serve pooling tasks such as {task!r}")

    def unavailable_services(self) -> tuple[str, ...]:
        """A sentence when no replica is healthy; () while one is (always, in process)."""
        return ()

    async def close(self) -> None:
        """Releases channels; local backends have nothing to release."""
