"""The LM service's one frozen config, built from CLI flags or the offline API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protos.errors import InvalidRequest

MODEL_IMPLS = ("auto", "native", "transformers")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How to load the model and size the engine.

    Args:
        model: HF model id or local path.
        model_impl: "auto" (native if we have one, else transformers), "native", "transformers".
        num_blocks: KV blocks; None sizes the cache from `kv_cache_memory` (bytes).
        max_model_len: longest prompt + output; None takes the model's context length.
        max_queued_requests: most requests waiting for a place in the batch; past it a new
            request is refused (Overloaded). None: no bound (the offline API).
    """

    model: str
    model_impl: str = "auto"
    dtype: str = "float32"
    device: str = "cpu"
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory: int = 1 << 30
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None
    max_queued_requests: int | None = None

    def __post_init__(self) -> None:
        if self.model_impl not in MODEL_IMPLS:
            raise InvalidRequest(
                f"model_impl must be one of {MODEL_IMPLS}, got {self.model_impl!r}"
            )
        if self.dtype not in DTYPES:
            raise InvalidRequest(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs", "kv_cache_memory"):
            if getattr(self, name) <= 0:
                raise InvalidRequest(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_blocks is not None and self.num_blocks <= 0:
            raise InvalidRequest(f"num_blocks must be > 0, got {self.num_blocks}")
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise InvalidRequest(f"max_model_len must be > 0, got {self.max_model_len}")
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise InvalidRequest(
                f"max_queued_requests must be >= 0, got {self.max_queued_requests}"
            )
