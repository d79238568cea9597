"""The language-model service: engine (scheduler, paged KV, runner, sampler), models, gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm_service.config import EngineConfig
    from lm_service.engine.engine import Engine
    from protos.sampling_params import SamplingParams

__all__ = ["Engine", "EngineConfig", "SamplingParams"]

_LAZY = {
    "Engine": "lm_service.engine.engine",
    "EngineConfig": "lm_service.config",
    "SamplingParams": "protos.sampling_params",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `meshserve --help` does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lm_service' has no attribute {name!r}")
