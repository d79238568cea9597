"""Checks of Pool inputs (`protos.lm_messages.PoolingInput`) and right-padded batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from protos.errors import InvalidRequest
from protos.lm_messages import PoolingInput


class PaddedBatch(NamedTuple):
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    token_type_ids: torch.Tensor  # [B, T] zeros where not given


def validate_input(
    index: int, item: PoolingInput, max_len: int, vocab_size: int, type_vocab_size: int
) -> None:
    """Refuses, naming input `index`, what the model cannot run (limits of 0: unchecked)."""
    n = len(item.token_ids)
    if n == 0:
        raise InvalidRequest(f"input {index} has no tokens")
    if n > max_len:
        raise InvalidRequest(f"input {index} has {n} tokens; this model takes at most {max_len}")
    if vocab_size and max(item.token_ids) >= vocab_size:
        raise InvalidRequest(
            f"input {index} holds token id {max(item.token_ids)}; the vocabulary has {vocab_size}"
        )
    types = item.token_type_ids
    if types is None:
        return
    if len(types) != n:
        raise InvalidRequest(f"input {index} has {n} token ids but {len(types)} token type ids")
    if type_vocab_size and types and max(types) >= type_vocab_size:
        raise InvalidRequest(
            f"input {index} holds token type {max(types)}; the model has {type_vocab_size}"
        )


def pad_inputs(
    inputs: Sequence[PoolingInput], pad_token_id: int, device: torch.device | str = "cpu"
) -> PaddedBatch:
    """Right-pads token ids (and token type ids) into [B, T] tensors with an attention mask."""
    longest = max(len(item.token_ids) for item in inputs)
    shape = (len(inputs), longest)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    types = torch.zeros(shape, dtype=torch.long)
    for row, item in enumerate(inputs):
        n = len(item.token_ids)
        input_ids[row, :n] = torch.tensor(item.token_ids)
        mask[row, :n] = 1
        if item.token_type_ids:
            types[row, :n] = torch.tensor(item.token_type_ids)
    return PaddedBatch(input_ids.to(device), mask.to(device), types.to(device))
