"""Bidirectional ranges in the LM engine: the model rules that make them, the scheduler rule that
no prefill chunk ends inside one, and prefix-cache keys that see a range's later tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lm_service.engine.block_pool import BlockPool, block_extra_keys
from lm_service.engine.request import Request
from lm_service.engine.scheduler import Scheduler, SchedulerConfig
from lm_service.models.prompt_attention import (
    PromptAttention,
    bidirectional_ranges,
    prompt_attention_of,
)
from protos.errors import InvalidRequest, Overloaded
from protos.lm_messages import MultiModalSpan


def _scheduler(budget: int, block_size: int = 4) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            max_num_batched_tokens=budget,
            max_num_seqs=4,
            block_size=block_size,
            num_blocks=64,
            max_model_len=256,
        )
    )


def _chunks(scheduler: Scheduler, request_id: str) -> list[tuple[int, int]]:
    """Run the request's prefill step by step: the [start, end) of every chunk."""
    chunks = []
    while True:
        out = scheduler.schedule()
        item = next(i for i in out.scheduled if i.request.request_id == request_id)
        chunks.append((item.num_computed_tokens, item.num_computed_tokens + item.num_new_tokens))
        sampled = {i.request.request_id: (5, None) for i in out.scheduled if i.will_sample}
        scheduler.update_from_output(out, sampled)
        if item.will_sample:
            return chunks


def test_the_model_rules() -> None:
    assert prompt_attention_of(SimpleNamespace(model_type="gemma3")) is PromptAttention.MEDIA
    assert prompt_attention_of(SimpleNamespace(model_type="paligemma")) is PromptAttention.PREFIX
    assert prompt_attention_of(SimpleNamespace(model_type="llava")) is PromptAttention.CAUSAL
    spans = [
        MultiModalSpan(2, 5, "a"),
        MultiModalSpan(7, 3, "b"),  # touches the first: HF's one run of image tokens
        MultiModalSpan(12, 7, "c", is_embed=(True, True, False, True, True, True, False)),
    ]
    assert bidirectional_ranges(PromptAttention.MEDIA, 20, spans) == ((2, 10), (12, 14), (15, 18))
    assert bidirectional_ranges(PromptAttention.PREFIX, 20, spans) == ((0, 20),)
    assert bidirectional_ranges(PromptAttention.CAUSAL, 20, spans) == ()
    with pytest.raises(InvalidRequest, match="more than this model's sliding window of 8"):
        bidirectional_ranges(PromptAttention.PREFIX, 20, (), sliding_window=8)


@pytest.mark.parametrize(
    ("budget", "chunks"),
    [
        (18, [(0, 4), (4, 22), (22, 30)]),  # [0, 18) would end in the image: back to its start
        (16, [(0, 4), (4, 20), (20, 30)]),
        (40, [(0, 30)]),
    ],
)
def test_no_chunk_ends_inside_a_range(budget: int, chunks: list[tuple[int, int]]) -> None:
    scheduler = _scheduler(budget)
    scheduler.add_request(Request("a", list(range(30)), bidirectional_ranges=((4, 20),)))
    assert _chunks(scheduler, "a") == chunks


def test_a_range_longer_than_the_budget_is_refused() -> None:
    scheduler = _scheduler(12)
    with pytest.raises(Overloaded, match=r"\[4, 20\) .* raise it to at least 16"):
        scheduler.add_request(Request("a", list(range(30)), bidirectional_ranges=((4, 20),)))


def test_a_range_waits_for_a_step_with_room() -> None:
    """Decodes of a running request take part of the budget: a range that does not fit what
    is left waits for the next step instead of being split."""
    scheduler = _scheduler(16)
    scheduler.add_request(Request("run", list(range(15))))
    assert _chunks(scheduler, "run") == [(0, 15)]
    scheduler.add_request(Request("img", list(range(20)), bidirectional_ranges=((0, 16),)))
    out = scheduler.schedule()  # 1 decode + 15 left: the 16-token range does not fit
    assert [(i.request.request_id, i.num_new_tokens) for i in out.scheduled] == [("run", 1)]


def test_ranges_are_checked() -> None:
    with pytest.raises(InvalidRequest, match="overlaps another"):
        Request("a", list(range(10)), bidirectional_ranges=((0, 5), (4, 8)))
    with pytest.raises(InvalidRequest, match="outside the prompt of 10"):
        Request("a", list(range(10)), bidirectional_ranges=((6, 12),))


def test_prefix_cache_keys_see_the_rest_of_a_range() -> None:
    """PaliGemma: the whole prompt is one range, so a block's KV depends on later tokens too;
    two prompts that share their first blocks must not share those blocks."""
    one = Request("a", [9] * 8 + [1, 2], bidirectional_ranges=((0, 10),))
    two = Request("b", [9] * 8 + [1, 3], bidirectional_ranges=((0, 10),))
    causal = Request("c", [9] * 8 + [1, 3])
    assert block_extra_keys(one, 0, 4) != block_extra_keys(two, 0, 4)
    assert block_extra_keys(causal, 0, 4) == ()
    pool = BlockPool(num_blocks=16, block_size=4)
    for request in (one, Request("a2", one.prompt_token_ids, bidirectional_ranges=((0, 10),))):
        computed = pool.get_computed_blocks(request)
        assert pool.allocate_slots(request, request.num_tokens - computed.num_tokens, computed)
        request.num_computed_tokens = request.num_tokens
        pool.cache_full_blocks(request)
    assert pool.get_computed_blocks(two).num_tokens == 0
    assert (
        pool.get_computed_blocks(
            Request("a3", one.prompt_token_ids, bidirectional_ranges=((0, 10),))
        ).num_tokens
        == 8
    )
