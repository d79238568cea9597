"""Media whose encoder states feed cross-attention (Mllama's images): the request's encoder
states and windows, instead of embedding spans in the prompt.

The encoder marks such an item (`cross_attention` in its metadata) and says which of its rows
the prompt's tokens attend (`cross_attention_rows`: its real tiles come first). The prompt
keeps one token per item (its placeholder); the items' states are concatenated in prompt
order, and the windows follow HF's MllamaProcessor (`protos.cross_windows`).
"""

from __future__ import annotations

from typing import Any

import torch

from gateway.prompt.slots import BuiltPrompt
from protos.cross_windows import CrossWindow, image_cross_windows
from protos.errors import InvalidRequest


def cross_attention_inputs(
    built: BuiltPrompt, encoded: list[Any]
) -> tuple[torch.Tensor | None, tuple[CrossWindow, ...]]:
    """(encoder states [S, hidden], windows) of a prompt's cross-attention items, or
    (None, ()) when it has none."""
    kinds = {bool(result.metadata.get("cross_attention")) for result in encoded}
    if kinds != {True}:
        if len(kinds) > 1:
            raise InvalidRequest("a prompt cannot mix cross-attention media with spliced media")
        return None, ()
    ranges = sorted(built.ranges, key=lambda r: r.offset)  # one position per item
    states: list[torch.Tensor] = []
    attended: list[tuple[int, int]] = []
    start = 0
    for placed in ranges:
        result = encoded[placed.item_index]
        rows = int(result.metadata.get("cross_attention_rows") or result.embeddings.shape[0])
        states.append(result.embeddings)
        attended.append((start, start + rows))
        start += int(result.embeddings.shape[0])
    token_id = int(encoded[ranges[0].item_index].metadata["embed_token_id"])
    try:
        windows = image_cross_windows(built.token_ids, token_id, attended)
    except ValueError as error:
        raise InvalidRequest(f"{error}; do not write the image token yourself") from error
    return torch.cat(states), windows
