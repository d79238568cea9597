"""The gateway: modality rules, limits, prompt building, orchestration, gRPC API, offline LLM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.llm import LLM
    from protos.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str) -> Any:
    # Lazy so that `meshserve --help` does not import torch.
    if name == "LLM":
        from gateway.llm import LLM

        return LLM
    if name == "SamplingParams":
        from protos.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
