"""PoolingModel: runs one pooling task over token ids, in length-sorted padded batches that
concurrent callers share through a micro-batcher."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch
from torch import nn

from lm_service.models.prompt_attention import prompt_attention_of
from lm_service.models.transformers_backend import MROPE_MODEL_TYPES
from lm_service.pooling.config import (
    PoolerConfig,
    PoolingConfig,
    PoolingType,
    parse_pooling_task,
)
from lm_service.pooling.defaults import (
    default_max_model_len,
    resolve_pooler_config,
    sentence_transformers_pooling,
)
from lm_service.pooling.inputs import pad_inputs, validate_input
from lm_service.pooling.loading import PoolingParts, load_pooling_parts
from lm_service.pooling.media import check_media, has_media, media_kwargs
from lm_service.pooling.pooler import Pooler, activate
from protos.errors import InvalidRequest, Unsupported
from protos.lm_messages import PoolingInput
from protos.micro_batcher import MicroBatcher
from protos.tasks import Task

logger = logging.getLogger(__name__)


class PoolingModel:
    """Runs one pooling task over token ids; thread-safe (one worker owns the model).

    Args:
        parts: the loaded model (see `load_pooling_parts`).
        config: the task, batching limits and pooler overrides.
    """

    def __init__(self, parts: PoolingParts, config: PoolingConfig) -> None:
        self.parts = parts
        self.config = config
        self.task = config.task
        st_pooling = sentence_transformers_pooling(parts.model_path)
        self.pooler_config = resolve_pooler_config(
            config.task, parts.head_pooling, st_pooling, config.override_pooler_config
        )
        self.pooler = Pooler(self.pooler_config)
        self.max_model_len = config.max_model_len or default_max_model_len(
            parts.hf_config, parts.model_path
        )
        text_config = parts.hf_config.get_text_config()
        self.vocab_size = int(getattr(text_config, "vocab_size", 0))
        self.hidden_size = int(getattr(text_config, "hidden_size", 0))
        self.type_vocab_size = int(getattr(text_config, "type_vocab_size", 0) or 0)
        self.pad_token_id = int(getattr(text_config, "pad_token_id", None) or 0)
        self.takes_token_types = _takes_token_types(parts.backbone)
        self.uses_mrope = text_config.model_type in MROPE_MODEL_TYPES
        self.prompt_attention = prompt_attention_of(parts.hf_config)
        self.device = next(parts.model.parameters()).device
        self._batcher: MicroBatcher[PoolingInput, torch.Tensor] | None = None
        _check_step_ids(self.pooler_config, self.vocab_size)

    @classmethod
    def from_config(cls, config: PoolingConfig) -> PoolingModel:
        model = cls(load_pooling_parts(config), config)
        logger.info(
            "pooling model %s (%s) task=%s pooler=%s",
            config.model,
            model.architecture,
            config.task.value,
            model.pooler_config,
        )
        return model

    @property
    def architecture(self) -> str:
        return self.parts.architecture

    @property
    def model(self) -> nn.Module:
        return self.parts.model

    @property
    def id2label(self) -> dict[int, str]:
        raw = getattr(self.parts.hf_config, "id2label", None) or {}
        return {int(k): str(v) for k, v in raw.items()}

    # ------------------------------------------------------------------ public API

    def pool(self, task: str | Task, inputs: Sequence[PoolingInput]) -> list[torch.Tensor]:
        """One float32 output per input, in order (shapes: see the package docstring).

        Raises:
            Unsupported: `task` is not the one this model serves.
            InvalidRequest: no inputs, an empty input, an input longer than max_model_len,
                token ids outside the vocabulary, media spans that do not fit.
        """
        self.check_task(parse_pooling_task(task))
        self.validate(inputs)
        return self._micro_batcher().submit(list(inputs))

    def check_task(self, task: Task) -> None:
        if task is not self.task:
            raise Unsupported(
                f"this LM serves {self.config.model} ({self.architecture}) for the "
                f"{self.task.value!r} task; {task.value!r} needs an LM started with "
                f"--task {task.value}"
            )

    def validate(self, inputs: Sequence[PoolingInput]) -> None:
        if not inputs:
            raise InvalidRequest("a pooling request needs at least one input")
        for index, item in enumerate(inputs):
            validate_input(index, item, self.max_model_len, self.vocab_size, self.type_vocab_size)
            check_media(index, item, self.hidden_size, self.uses_mrope)

    def run(self, inputs: Sequence[PoolingInput]) -> list[torch.Tensor]:
        """Runs validated inputs now, in this thread: length-sorted padded batches."""
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].token_ids))
        results: list[torch.Tensor | None] = [None] * len(inputs)
        start = 0
        for chunk in self._chunks([inputs[i] for i in order]):
            indices = order[start : start + len(chunk)]
            for index, output in zip(indices, self._forward(chunk), strict=True):
                results[index] = output
            start += len(chunk)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

    # ------------------------------------------------------------------ internals

    def _micro_batcher(self) -> MicroBatcher[PoolingInput, torch.Tensor]:
        if self._batcher is None:
            self._batcher = MicroBatcher(
                self.run, max_batch_size=self.config.max_batch_size, name="pooling-batcher"
            )
        return self._batcher

    def _chunks(self, ordered: list[PoolingInput]) -> list[list[PoolingInput]]:
        """Length-sorted inputs cut so that count x longest <= max_num_batched_tokens."""
        chunks: list[list[PoolingInput]] = []
        current: list[PoolingInput] = []
        for item in ordered:
            padded = (len(current) + 1) * len(item.token_ids)
            if current and padded > self.config.max_num_batched_tokens:
                chunks.append(current)
                current = []
            current.append(item)
        return [*chunks, current] if current else chunks

    @torch.inference_mode()
    def _forward(self, inputs: list[PoolingInput]) -> list[torch.Tensor]:
        batch = pad_inputs(inputs, self.pad_token_id, self.device)
        kwargs = {"token_type_ids": batch.token_type_ids} if self.takes_token_types else {}
        if has_media(inputs):
            types = kwargs.get("token_type_ids")
            media = media_kwargs(
                self.parts.backbone, inputs, batch.input_ids, types, self.prompt_attention
            )
            kwargs.update(media)
        else:
            kwargs["input_ids"] = batch.input_ids
        out = self.parts.backbone(attention_mask=batch.attention_mask, **kwargs)
        hidden = out.last_hidden_state  # [B, T, H]
        pooled = self.pooler.pool(hidden, batch.attention_mask, batch.input_ids)
        heads = self._apply_head(pooled)
        return [activate(y, self.pooler_config, self.task).float().cpu() for y in heads]

    def _apply_head(self, pooled: list[torch.Tensor]) -> list[torch.Tensor]:
        if all(p.dim() == 1 for p in pooled):
            return list(self.parts.head(torch.stack(pooled)).unbind(0))  # [B, D] -> B x [D]
        return [self.parts.head(p) for p in pooled]  # rows x [D] each


def _takes_token_types(backbone: nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(backbone.forward).parameters


def _check_step_ids(pooler: PoolerConfig, vocab_size: int) -> None:
    """STEP pooling's token ids must exist, or every request would fail later."""
    if pooler.pooling_type is not PoolingType.STEP:
        return
    ids = [pooler.step_tag_id, *pooler.returned_token_ids]
    bad = [i for i in ids if i is None or not 0 <= i < vocab_size]
    if bad:
        raise InvalidRequest(
            f"override_pooler_config: token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
        )
