"""What a pooling model is asked to do: the task, the pooler (PoolerConfig) and how to load
and batch the model (PoolingConfig), with `--override-pooler-config` parsed and validated."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protos.errors import InvalidRequest
from protos.flags import parse_json_object
from protos.tasks import POOLING_TASKS, Task


def parse_pooling_task(value: str | Task) -> Task:
    """`value` as one of the pooling tasks; InvalidRequest names them otherwise."""
    try:
        return Task.parse(value, POOLING_TASKS)
    except InvalidRequest:
        names = ", ".join(POOLING_TASKS)
        raise InvalidRequest(
            f"unknown pooling task {str(value)!r}; expected one of {names}"
        ) from None


class PoolingType(enum.Enum):
    LAST = "LAST"
    ALL = "ALL"
    CLS = "CLS"
    MEAN = "MEAN"
    STEP = "STEP"


@dataclass(frozen=True, slots=True)
class PoolerConfig:
    """How hidden states become one output per input (vLLM's PoolerConfig).

    Args:
        pooling_type: MEAN (masked mean), CLS (first token), LAST (last real token), ALL (every
            token), STEP (the rows at `step_tag_id`).
        normalize: L2-normalize the output.
        softmax: softmax over the output's last dim (classify); for score, apply the score
            activation (see the package docstring).
        step_tag_id: STEP only: the token id that marks the end of a step.
        returned_token_ids: STEP only: the LM-head columns to keep, e.g. the "+" and "-" ids.
    """

    pooling_type: PoolingType
    normalize: bool = False
    softmax: bool = False
    step_tag_id: int | None = None
    returned_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.pooling_type is PoolingType.STEP and self.step_tag_id is None:
            raise InvalidRequest('pooling_type STEP needs "step_tag_id" (the step tag token id)')


POOLER_KEYS = ("pooling_type", "normalize", "softmax", "step_tag_id", "returned_token_ids")


def parse_pooler_overrides(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """`--override-pooler-config` (JSON text or a mapping) -> validated PoolerConfig fields.

    Idempotent: parsing an already parsed mapping gives it back.
    """
    if value is None or value == "":
        return {}
    raw = (
        parse_json_object(value, "override_pooler_config")
        if isinstance(value, str)
        else dict(value)
    )
    unknown = sorted(set(raw) - set(POOLER_KEYS))
    if unknown:
        raise InvalidRequest(
            f"override_pooler_config: unknown key(s) {unknown}; known: {', '.join(POOLER_KEYS)}"
        )
    return {key: _pooler_value(key, v) for key, v in raw.items()}


def _pooler_value(key: str, value: Any) -> Any:
    if key == "pooling_type":
        if isinstance(value, PoolingType):
            return value
        try:
            return PoolingType(str(value).upper())
        except ValueError:
            names = ", ".join(t.value for t in PoolingType)
            raise InvalidRequest(f"pooling_type must be one of {names}, got {value!r}") from None
    if key in ("normalize", "softmax") and isinstance(value, bool):
        return value
    if key == "step_tag_id" and _is_int(value):
        return value
    if key == "returned_token_ids" and isinstance(value, list | tuple) and all(map(_is_int, value)):
        return tuple(value)
    kinds = {"normalize": "true or false", "softmax": "true or false"}
    kind = kinds.get(key, "an integer" if key == "step_tag_id" else "a list of integers")
    raise InvalidRequest(f"override_pooler_config: {key} must be {kind}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class PoolingConfig:
    """How to load and run a pooling model.

    Args:
        task: a pooling Task or its name ("embed", ...).
        override_pooler_config: fields of PoolerConfig that replace the model's defaults, as
            a mapping or JSON text (`pooling_type` by name); parsed on construction.
        max_num_batched_tokens: padded tokens per forward (batch size x longest input).
        max_model_len: longest input; None: the model's positions (or sentence-transformers'
            max_seq_length, whichever is smaller).
    """

    model: str
    task: Task
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    hf_overrides: Mapping[str, Any] = field(default_factory=dict)
    revision: str | None = None
    override_pooler_config: Mapping[str, Any] | str = field(default_factory=dict)
    max_model_len: int | None = None
    max_num_batched_tokens: int = 2048
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", parse_pooling_task(self.task))
        overrides = parse_pooler_overrides(self.override_pooler_config)
        object.__setattr__(self, "override_pooler_config", overrides)
        if self.max_num_batched_tokens <= 0 or self.max_batch_size <= 0:
            raise InvalidRequest("max_num_batched_tokens and max_batch_size must be > 0")

    @classmethod
    def from_engine_config(
        cls,
        config: Any,
        task: str | Task,
        override_pooler_config: str | Mapping[str, Any] | None = None,
    ) -> PoolingConfig:
        """The pooling config of an EngineConfig (its KV-cache fields do not apply)."""
        return cls(
            model=config.model,
            task=parse_pooling_task(task),
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            hf_overrides=dict(config.hf_overrides),
            revision=config.revision,
            override_pooler_config=parse_pooler_overrides(override_pooler_config),
            max_model_len=config.max_model_len,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_batch_size=config.max_num_seqs,
        )
