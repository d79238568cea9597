"""Hidden states -> one output per input: the pooling (MEAN / CLS / LAST / ALL / STEP) before
the head, and the activation after it (shapes: see the package docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lm_service.pooling.config import PoolerConfig, PoolingType
from protos.tasks import Task


class Pooler:
    """Picks or averages hidden states per input.

    Args (of `pool`):
        hidden: [B, T, H] last hidden states of a right-padded batch.
        mask: [B, T] 1 for real tokens.
        input_ids: [B, T] (STEP looks for `step_tag_id`).
    Returns one tensor per input: [H] (MEAN, CLS, LAST) or [rows, H] (ALL, STEP).
    """

    def __init__(self, config: PoolerConfig) -> None:
        self.config = config

    def pool(
        self, hidden: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor
    ) -> list[torch.Tensor]:
        kind = self.config.pooling_type
        lengths = mask.sum(dim=1)  # [B]
        if kind is PoolingType.MEAN:
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            summed = (hidden * weights).sum(dim=1)  # [B, H]
            return list((summed / weights.sum(dim=1).clamp(min=1e-9)).unbind(0))
        if kind is PoolingType.CLS:
            return list(hidden[:, 0].unbind(0))
        if kind is PoolingType.LAST:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return list(hidden[rows, lengths - 1].unbind(0))
        if kind is PoolingType.ALL:
            return [hidden[i, : int(n)] for i, n in enumerate(lengths)]
        steps = (input_ids == self.config.step_tag_id) & mask.bool()  # [B, T]
        return [hidden[i][steps[i]] for i in range(hidden.shape[0])]


def activate(output: torch.Tensor, config: PoolerConfig, task: Task) -> torch.Tensor:
    """A head's output for one input -> the task's float32 answer: the STEP columns kept, then
    the score activation (score), or normalize / softmax as `config` asks."""
    if config.pooling_type is PoolingType.STEP and config.returned_token_ids:
        output = output[..., list(config.returned_token_ids)]
    output = output.float()
    if task is Task.SCORE:
        return _score(output, config.softmax)
    if config.normalize:
        output = F.normalize(output, p=2, dim=-1)
    if config.softmax:
        output = output.softmax(dim=-1)
    return output


def _score(logits: torch.Tensor, activated: bool) -> torch.Tensor:
    """[num_labels] -> [1]: sigmoid of one logit, else P(last label); raw when not activated."""
    if not activated:
        return logits[-1:]
    if logits.shape[-1] == 1:
        return logits.sigmoid()
    return logits.softmax(dim=-1)[-1:]
