"""Media in pooling inputs: the multimodal embedding rows (LLaVA-NeXT `T / I`, Qwen2-VL
`T + I`) pool a prompt whose placeholder rows take the encoders' embeddings.

The backbone is the checkpoint's whole HF base model (e.g. LlavaNextModel); it is run on
`inputs_embeds` (token embeddings with the media rows scattered in), never on pixels: the
encoders already ran the media, as for Generate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lm_service.models.prompt_attention import PromptAttention
from protos.errors import InvalidRequest
from protos.lm_messages import PoolingInput


def check_media(index: int, item: PoolingInput, hidden_size: int, uses_mrope: bool) -> None:
    """Refuses, naming input `index`, spans or positions that do not fit its tokens."""
    num_tokens = len(item.token_ids)
    for span_index, span in enumerate(item.mm_spans):
        try:
            span.check(span_index, num_tokens, hidden_size)
        except InvalidRequest as error:
            raise InvalidRequest(f"input {index}: {error}") from error
    positions = item.mrope_positions
    if positions is None:
        return
    if not uses_mrope:
        raise InvalidRequest(f"input {index} has mrope_positions; this model does not use M-RoPE")
    if tuple(positions.shape) != (3, num_tokens):
        raise InvalidRequest(
            f"input {index}: mrope_positions must have shape [3, {num_tokens}], "
            f"got {list(positions.shape)}"
        )


def has_media(inputs: Sequence[PoolingInput]) -> bool:
    return any(item.mm_spans or item.mrope_positions is not None for item in inputs)


def media_kwargs(
    backbone: nn.Module,
    inputs: Sequence[PoolingInput],
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    attention: PromptAttention,
) -> dict[str, Any]:
    """`inputs_embeds` [B, T, H] with every span's rows in place, and `position_ids`
    [3, B, T] when any input carries M-RoPE positions (the others count 0, 1, 2, ...).

    `token_type_ids` [B, T] (given when the backbone takes them): a model whose images attend
    both ways (Gemma 3) reads its image blocks from them, 1 at the embed positions, as its
    processor writes them."""
    embeds = backbone.get_input_embeddings()(input_ids)  # [B, T, H]
    for row, item in enumerate(inputs):
        for span in item.mm_spans:
            positions, rows = span.embed_rows(span.offset, span.end)
            embeds[row, positions] = span.embeddings[rows].to(embeds.device, embeds.dtype)
    kwargs: dict[str, Any] = {"inputs_embeds": embeds}
    if token_type_ids is not None and attention is PromptAttention.MEDIA:
        kwargs["token_type_ids"] = _media_token_types(inputs, token_type_ids)
    if any(item.mrope_positions is not None for item in inputs):
        kwargs["position_ids"] = _mrope_batch(inputs, input_ids.shape[1], input_ids.device)
    return kwargs


def _media_token_types(
    inputs: Sequence[PoolingInput], token_type_ids: torch.Tensor
) -> torch.Tensor:
    types = token_type_ids.clone()  # [B, T]
    for row, item in enumerate(inputs):
        for span in item.mm_spans:
            positions, _ = span.embed_rows(span.offset, span.end)
            types[row, positions] = 1
    return types


def _mrope_batch(inputs: Sequence[PoolingInput], length: int, device: torch.device) -> torch.Tensor:
    # NOTE: padding positions stay 0; the attention mask hides them
    batch = torch.zeros(3, len(inputs), length, dtype=torch.long)  # [3, B, T]
    for row, item in enumerate(inputs):
        n = len(item.token_ids)
        if item.mrope_positions is None:
            batch[:, row, :n] = torch.arange(n)  # text only: the three axes agree
        else:
            batch[:, row, :n] = item.mrope_positions.long()
    return batch.to(device)
