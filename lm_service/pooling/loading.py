"""A checkpoint -> the parts a pooling model runs: the HF class the task needs (base model,
sequence classifier or causal LM), its backbone, and its head as a function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from lm_service.models.loader import load_config, resolve_model_path
from lm_service.pooling.config import PoolingConfig, PoolingType
from lm_service.pooling.defaults import is_encoder_only
from protos.dtypes import config_dtype, resolve_dtype
from protos.errors import Unsupported
from protos.tasks import Task

Head = Callable[[torch.Tensor], torch.Tensor]  # [..., hidden] -> [..., D]


class PoolingParts(NamedTuple):
    """A loaded checkpoint split into what the runner calls."""

    model: nn.Module  # the whole HF model (apply_model sees it)
    backbone: nn.Module  # input ids -> last_hidden_state [B, T, H]
    head: Head  # pooled [..., H] -> [..., D]
    head_pooling: PoolingType  # the pooling the head was trained with
    hf_config: Any
    architecture: str
    model_path: Path


_HEADED_SUFFIXES = ("ForSequenceClassification", "ForRewardModel")


def load_pooling_parts(config: PoolingConfig) -> PoolingParts:
    """Loads the HF class the task needs and finds its backbone and head."""
    model_path = resolve_model_path(config.model, revision=config.revision)
    hf_config = load_config(
        model_path,
        trust_remote_code=config.trust_remote_code,
        hf_overrides=dict(config.hf_overrides) or None,
        revision=config.revision,
    )
    architecture = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    kind = _model_kind(config, architecture)
    model = _load_hf_model(kind, model_path, hf_config, config)
    backbone, head, head_pooling = _split(kind, model, hf_config, architecture)
    return PoolingParts(model, backbone, head, head_pooling, hf_config, architecture, model_path)


def _model_kind(config: PoolingConfig, architecture: str) -> str:
    """ "base" (hidden states), "classifier" (sequence head) or "causal" (LM head, STEP)."""
    task, headed = config.task, architecture.endswith(_HEADED_SUFFIXES)
    if task in (Task.CLASSIFY, Task.SCORE):
        if not headed:
            raise Unsupported(_no_head_sentence(architecture, task))
        return "classifier"
    if task is Task.REWARD:
        step = config.override_pooler_config.get("pooling_type") is PoolingType.STEP
        return "causal" if step else ("classifier" if headed else "base")
    return "base"


def _no_head_sentence(architecture: str, task: Task) -> str:
    if task is Task.SCORE:
        return (
            f"{architecture} has no classification head, so it cannot score pairs as a "
            "cross-encoder; serve it with --task embed (Score then compares embeddings by cosine)"
        )
    return (
        f"{architecture} has no classification head; --task classify needs a "
        "*ForSequenceClassification checkpoint"
    )


def _load_hf_model(kind: str, model_path: Path, hf_config: Any, config: PoolingConfig) -> Any:
    import transformers

    auto = {
        "base": transformers.AutoModel,
        "classifier": transformers.AutoModelForSequenceClassification,
        "causal": transformers.AutoModelForCausalLM,
    }[kind]
    dtype = resolve_dtype(config.dtype, config_dtype(hf_config))
    model = auto.from_pretrained(
        str(model_path),
        config=hf_config,
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        revision=config.revision,
    )
    return model.to(config.device).eval()


def _split(
    kind: str, model: Any, hf_config: Any, architecture: str
) -> tuple[nn.Module, Head, PoolingType]:
    """(backbone, head, the head's pooling) of a loaded model."""
    encoder = is_encoder_only(hf_config)
    own_pooling = PoolingType.CLS if encoder else PoolingType.LAST
    if kind == "base":
        return model, _identity, own_pooling
    backbone = getattr(model, model.base_model_prefix)
    if kind == "causal":
        return backbone, model.get_output_embeddings(), PoolingType.STEP
    return (backbone, *_classifier_head(model, backbone, architecture))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _classifier_head(model: Any, backbone: Any, architecture: str) -> tuple[Head, PoolingType]:
    """The sequence-classification head as a function of pooled hidden states.

    Decoders (`score`, as in transformers' GenericForSequenceClassification) pool LAST; BERT's
    head is its pooler's dense + tanh then `classifier`, on CLS; RoBERTa's head reads
    `features[:, 0]`, so pooled rows are given a length-1 token axis.
    """
    score = getattr(model, "score", None)
    if isinstance(score, nn.Linear):
        return score, PoolingType.LAST
    classifier = getattr(model, "classifier", None)
    pooler = getattr(backbone, "pooler", None)
    if isinstance(classifier, nn.Linear) and hasattr(pooler, "dense"):
        return (lambda x: classifier(pooler.activation(pooler.dense(x)))), PoolingType.CLS
    if classifier is not None and hasattr(classifier, "out_proj"):
        return (lambda x: classifier(x.unsqueeze(-2))), PoolingType.CLS
    if isinstance(classifier, nn.Linear):
        return classifier, PoolingType.CLS
    raise Unsupported(f"{architecture}: meshserve does not know where its classification head is")
