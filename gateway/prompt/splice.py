"""Splicing a model's prompt from what its encoders' processors said about each item.

HF processors replace each item's placeholder in the text by a replacement string, tokenize the
whole text once, and scatter the item's embeddings at the positions holding the model's embed
token, in prompt order. We do exactly that, with the replacement strings computed where the
media is (the encoder service), so the gateway never touches pixels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from gateway.prompt.slots import BuiltPrompt, MediaSlot, PlaceholderRange
from protos.encoder_messages import BEFORE_PROMPT
from protos.errors import InvalidRequest


def splice(
    text: str, items: Sequence[MediaSlot], placeholder_of: Callable[[str], str]
) -> tuple[str, list[int]]:
    """`text` with the k-th placeholder of each kind replaced by the k-th such item's
    replacement; and the item indices in the order their placeholders appear (items placed
    BEFORE_PROMPT are not in the text: see `before_prompt`)."""
    queues: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.placeholder != BEFORE_PROMPT:
            queues.setdefault(str(item.placeholder), []).append(index)
    _check_counts(text, items, queues, placeholder_of)
    if not queues:
        return text, []
    pattern = re.compile("|".join(map(re.escape, sorted(queues, key=len, reverse=True))))
    order: list[int] = []

    def replace(match: re.Match[str]) -> str:
        index = queues[match.group(0)].pop(0)
        order.append(index)
        return str(items[index].replacement)

    return pattern.sub(replace, text), order


def before_prompt(items: Sequence[MediaSlot]) -> list[int]:
    """The items whose processor puts them before the prompt, in item order."""
    return [i for i, item in enumerate(items) if item.placeholder == BEFORE_PROMPT]


def _check_counts(
    text: str,
    items: Sequence[MediaSlot],
    queues: dict[str, list[int]],
    placeholder_of: Callable[[str], str],
) -> None:
    for placeholder, indices in queues.items():
        found = text.count(placeholder)
        if found != len(indices):
            modality = items[indices[0]].modality
            raise InvalidRequest(
                f"The prompt has {found} {placeholder} placeholder(s) but {len(indices)} "
                f"{modality}(s) were given; put one {placeholder_of(modality)} where each "
                f"{modality} goes"
            )


def locate_embeds(
    token_ids: Sequence[int], items: Sequence[MediaSlot], order: Sequence[int]
) -> tuple[PlaceholderRange, ...]:
    """Each item's embedding positions: its share, in prompt order, of its embed token's."""
    ranges: list[PlaceholderRange] = []
    by_token: dict[int, list[int]] = {}
    for index in order:
        by_token.setdefault(int(items[index].embed_token_id or 0), []).append(index)
    for token_id, indices in by_token.items():
        hits = [p for p, t in enumerate(token_ids) if t == token_id]
        needed = sum(items[i].num_tokens for i in indices)
        if len(hits) != needed:
            raise InvalidRequest(
                f"the prompt holds {len(hits)} embedding positions (token {token_id}) but its "
                f"media items have {needed} embedding rows; do not write that token yourself"
            )
        start = 0
        for index in indices:
            mine = hits[start : start + items[index].num_tokens]
            start += len(mine)
            ranges.append(_range(index, mine))
    return tuple(sorted(ranges, key=lambda r: r.offset))


def _range(index: int, positions: Sequence[int]) -> PlaceholderRange:
    offset, length = positions[0], positions[-1] - positions[0] + 1
    if length == len(positions):
        return PlaceholderRange(index, offset, length)
    taken = set(positions)
    mask = tuple(p in taken for p in range(offset, offset + length))
    return PlaceholderRange(index, offset, length, mask)


def take_token_ids(built: BuiltPrompt, items: Sequence[MediaSlot]) -> BuiltPrompt:
    """Discrete-token items (Chameleon) write their ids at their embed positions, as prompt
    tokens, and keep no range: the LM embeds them like any token."""
    token_ids, ranges = list(built.token_ids), []
    for r in built.ranges:
        ids = items[r.item_index].token_ids
        if ids is None:
            ranges.append(r)
            continue
        mask = r.is_embed or (True,) * r.length
        positions = [r.offset + i for i, takes in enumerate(mask) if takes]
        if len(positions) != len(ids):
            raise InvalidRequest(
                f"media item {r.item_index} has {len(ids)} token ids for {len(positions)} "
                "embed positions"
            )
        for position, token_id in zip(positions, ids, strict=True):
            token_ids[position] = int(token_id)
    return BuiltPrompt(token_ids, tuple(ranges), built.mrope_positions)
