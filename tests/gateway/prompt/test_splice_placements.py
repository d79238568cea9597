"""Splicing items that are not in the text (BLIP-2) and items that are token ids (Chameleon)."""

from __future__ import annotations

import pytest

from gateway.prompt.slots import BuiltPrompt, MediaSlot, PlaceholderRange
from gateway.prompt.splice import before_prompt, splice, take_token_ids
from protos.encoder_messages import BEFORE_PROMPT
from protos.errors import InvalidRequest


def _slot(placeholder: str, replacement: str, token_ids: tuple[int, ...] | None = None):
    return MediaSlot(
        "image",
        2,
        "h",
        placeholder=placeholder,
        replacement=replacement,
        embed_token_id=6,
        token_ids=token_ids,
    )


def test_items_before_the_prompt_are_not_looked_for_in_the_text() -> None:
    items = [_slot(BEFORE_PROMPT, "<i><i>"), _slot("<image>", "<b><i><i><e>")]
    text, order = splice("Look: <image> and say.", items, lambda m: "<image>")
    assert text == "Look: <b><i><i><e> and say." and order == [1]
    assert before_prompt(items) == [0]


def test_token_ids_take_the_embed_positions_and_leave_no_range() -> None:
    built = BuiltPrompt(
        [1, 7, 6, 0, 6, 8, 9, 6, 6],
        (PlaceholderRange(0, 2, 3, (True, False, True)), PlaceholderRange(1, 7, 2)),
    )
    items = [_slot("<image>", "x", token_ids=(301, 302)), _slot("<image>", "y")]
    out = take_token_ids(built, items)
    assert out.token_ids == [1, 7, 301, 0, 302, 8, 9, 6, 6]
    assert out.ranges == (PlaceholderRange(1, 7, 2),)


def test_token_ids_that_do_not_fit_are_refused() -> None:
    built = BuiltPrompt([6, 6], (PlaceholderRange(0, 0, 2),))
    with pytest.raises(InvalidRequest, match="media item 0 has 3 token ids for 2 embed positions"):
        take_token_ids(built, [_slot("<image>", "x", token_ids=(1, 2, 3))])
