"""Which prompt positions a model attends both ways: HF's block masks, per request.

HF builds these masks inside each model's own `create_masks_for_generate`, from the
`token_type_ids` its processor returns (`block_sequence_ids` in `masking_utils`); no config
field names the rule, so the model types that have one are listed here (model-specific by
necessity). Everything else is causal.

- MEDIA (Gemma 3): each contiguous run of media embedding positions is one block
  (`token_type_ids == 1` runs): an image's tokens see each other, later ones included.
- PREFIX (PaliGemma): the whole prompt is one block (`token_type_ids == 0`, no suffix at
  inference); generated tokens are causal.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from protos.errors import InvalidRequest
from protos.lm_messages import MultiModalSpan

Ranges = tuple[tuple[int, int], ...]


class PromptAttention(enum.Enum):
    CAUSAL = "causal"
    MEDIA = "media"
    PREFIX = "prefix"


# model_type of the checkpoint's top-level config -> its rule (see the module docstring)
_RULES: dict[str, PromptAttention] = {
    "gemma3": PromptAttention.MEDIA,
    "paligemma": PromptAttention.PREFIX,
}


def prompt_attention_of(hf_config: Any) -> PromptAttention:
    return _RULES.get(str(getattr(hf_config, "model_type", "")), PromptAttention.CAUSAL)


def bidirectional_ranges(
    rule: PromptAttention,
    num_prompt_tokens: int,
    spans: Sequence[MultiModalSpan],
    sliding_window: int | None = None,
) -> Ranges:
    """The request's `[start, end)` ranges that attend both ways, sorted and disjoint."""
    if rule is PromptAttention.PREFIX:
        _check_prefix_window(num_prompt_tokens, sliding_window)
        return ((0, num_prompt_tokens),)
    if rule is PromptAttention.MEDIA:
        return _merge_touching([run for span in spans for run in _embed_runs(span)])
    return ()


def _embed_runs(span: MultiModalSpan) -> list[tuple[int, int]]:
    """The contiguous runs of a span's embedding positions."""
    if span.is_embed is None:
        return [(span.offset, span.end)]
    runs: list[tuple[int, int]] = []
    for index, takes in enumerate(span.is_embed):
        position = span.offset + index
        if not takes:
            continue
        if runs and runs[-1][1] == position:
            runs[-1] = (runs[-1][0], position + 1)
        else:
            runs.append((position, position + 1))
    return runs


def _merge_touching(runs: list[tuple[int, int]]) -> Ranges:
    """HF's blocks are runs of media tokens: two items' runs that touch are one block."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(runs):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def _check_prefix_window(num_prompt_tokens: int, sliding_window: int | None) -> None:
    # NOTE: HF's PaliGemma 2 sliding layers keep the whole prefix open (OR(sliding, block));
    # our kernels cut blocks by the window (Gemma 3's AND rule). They agree while the prompt
    # fits the window; beyond it we refuse rather than answer differently.
    if sliding_window is not None and num_prompt_tokens > sliding_window:
        raise InvalidRequest(
            f"the prompt has {num_prompt_tokens} tokens, more than this model's sliding window "
            f"of {sliding_window}: its bidirectional prefix cannot be attended exactly"
        )
