"""The pooler and input limit a model gets when the user overrides nothing.

vLLM's per-task defaults (the table in the package docstring): sentence-transformers'
modules.json for embed, else the head's own pooling (CLS for encoders, LAST for decoders).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_service.pooling.config import PoolerConfig, PoolingType
from protos.errors import InvalidRequest
from protos.tasks import Task


def sentence_transformers_pooling(model_path: Path) -> dict[str, Any] | None:
    """The pooler that a sentence-transformers checkpoint declares (modules.json), or None.

    Its Pooling module's config gives the pooling type; a Normalize module means normalize.
    """
    modules_file = model_path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    types = [str(m.get("type", "")) for m in modules]
    pooling = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    if pooling is None:
        return None
    config_file = model_path / pooling.get("path", "") / "config.json"
    if not config_file.is_file():
        return None
    pooling_type = _st_pooling_type(json.loads(config_file.read_text()))
    if pooling_type is None:
        return None
    return {"pooling_type": pooling_type, "normalize": any(t.endswith(".Normalize") for t in types)}


def _st_pooling_type(config: Mapping[str, Any]) -> PoolingType | None:
    if config.get("pooling_mode_mean_tokens"):
        return PoolingType.MEAN
    if config.get("pooling_mode_cls_token"):
        return PoolingType.CLS
    if config.get("pooling_mode_lasttoken"):
        return PoolingType.LAST
    return None  # max / weighted mean: not supported, fall back to the model's default


def is_encoder_only(hf_config: Any) -> bool:
    """BERT-like (bidirectional, masked-LM family) models pool CLS by default; decoders LAST."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(hf_config, "model_type", "")
    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        hf_config, "is_decoder", False
    )


def default_pooler_config(
    task: Task, head_pooling: PoolingType, st_pooling: Mapping[str, Any] | None
) -> PoolerConfig:
    """vLLM's per-task default; for embed, a sentence-transformers config wins."""
    if task is Task.EMBED:
        if st_pooling is not None:
            return PoolerConfig(st_pooling["pooling_type"], normalize=st_pooling["normalize"])
        return PoolerConfig(head_pooling, normalize=True)
    if task is Task.REWARD:
        return PoolerConfig(PoolingType.ALL)
    return PoolerConfig(head_pooling, softmax=True)


def resolve_pooler_config(
    task: Task,
    head_pooling: PoolingType,
    st_pooling: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
) -> PoolerConfig:
    """The default for `task`, with `overrides` on top; refuses combinations that cannot work."""
    config = dataclasses.replace(default_pooler_config(task, head_pooling, st_pooling), **overrides)
    per_token = config.pooling_type in (PoolingType.ALL, PoolingType.STEP)
    if per_token and task is not Task.REWARD:
        raise InvalidRequest(
            f"pooling_type {config.pooling_type.value} gives several rows per input; "
            f"use it with the reward task, not {task.value!r}"
        )
    return config


def default_max_model_len(hf_config: Any, model_path: Path) -> int:
    """The model's positions, capped by sentence-transformers' max_seq_length if it has one."""
    text_config = hf_config.get_text_config()
    limit = int(getattr(text_config, "max_position_embeddings", 0) or 512)
    st_file = model_path / "sentence_bert_config.json"
    if st_file.is_file():
        limit = min(limit, int(json.loads(st_file.read_text()).get("max_seq_length", limit)))
    return limit
