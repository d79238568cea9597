from __future__ import annotations

from lm_service.engine.block_pool import BlockPool, block_extra_keys, hash_block
from lm_service.engine.request import Request
from protos.lm_messages import MultiModalSpan

BLOCK_SIZE = 4


def make_request(request_id: str, prompt: list[int], **kwargs: object) -> Request:
    return Request(request_id, prompt, **kwargs)


def prefill(pool: BlockPool, request: Request) -> None:
    """Admit a request, compute its whole prompt, and cache its full blocks (one fake step)."""
    computed = pool.get_computed_blocks(request)
    num_new = request.num_tokens - computed.num_tokens
    assert pool.allocate_slots(request, num_new, computed)
    request.num_computed_tokens = request.num_tokens
    pool.cache_full_blocks(request)


def test_allocate_and_free_return_blocks() -> None:
    pool = BlockPool(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    request = make_request("a", list(range(10)))  # 10 tokens -> 3 blocks
    assert pool.allocate_slots(request, 10)
    assert len(request.block_ids) == 3 and len(set(request.block_ids)) == 3
    assert pool.num_free_blocks == 5
    assert pool.usage == 3 / 8
    pool.free(request)
    assert request.block_ids == []
    assert pool.num_free_blocks == 8 and pool.usage == 0.0


def test_allocate_grows_table_only_when_a_block_fills() -> None:
    pool = BlockPool(num_blocks=8, block_size=BLOCK_SIZE)
    request = make_request("a", [1, 2, 3])
    assert pool.allocate_slots(request, 3)
    first = list(request.block_ids)
    request.num_computed_tokens = 3
    assert pool.allocate_slots(request, 1)  # 4th token still fits block 0
    assert request.block_ids == first
    request.num_computed_tokens = 4
    assert pool.allocate_slots(request, 1)  # 5th token needs a new block
    assert request.block_ids[:1] == first and len(request.block_ids) == 2


def test_allocation_fails_without_side_effects_when_blocks_run_out() -> None:
    pool = BlockPool(num_blocks=2, block_size=BLOCK_SIZE)
    request = make_request("a", list(range(12)))
    assert not pool.can_allocate(3)
    assert not pool.allocate_slots(request, 12)
    assert request.block_ids == [] and pool.num_free_blocks == 2


def test_prefix_hit_shares_blocks_with_ref_counts() -> None:
    pool = BlockPool(num_blocks=16, block_size=BLOCK_SIZE)
    prompt = list(range(100, 110))  # 2 full blocks + 2 tokens
    first = make_request("a", prompt)
    prefill(pool, first)
    second = make_request("b", prompt + [7, 8])
    computed = pool.get_computed_blocks(second)
    assert computed.num_tokens == 8
    assert [b.block_id for b in computed.blocks] == first.block_ids[:2]
    assert pool.allocate_slots(second, second.num_tokens - 8, computed)
    assert second.block_ids[:2] == first.block_ids[:2]
    assert second.block_ids[2] != first.block_ids[2]
    assert [pool.blocks[i].ref_count for i in first.block_ids] == [2, 2, 1]
    pool.free(first)
    assert [pool.blocks[i].ref_count for i in second.block_ids[:2]] == [1, 1]
    assert pool.stats.num_query_tokens == 10 + 12
    assert pool.stats.num_hit_tokens == 8


def test_freed_cached_blocks_are_revived_and_leave_the_free_queue() -> None:
    pool = BlockPool(num_blocks=4, block_size=BLOCK_SIZE)
    first = make_request("a", list(range(9)))  # 2 full blocks
    prefill(pool, first)
    pool.free(first)
    assert pool.num_free_blocks == 4 and pool.num_cached_blocks == 2
    again = make_request("b", list(range(9)))
    computed = pool.get_computed_blocks(again)
    assert computed.num_tokens == 8
    # 2 revived blocks + 1 new block for the 9th token
    assert pool.num_blocks_to_allocate(again, 1, computed) == 3
    assert pool.allocate_slots(again, 1, computed)
    assert pool.num_free_blocks == 1
    assert all(pool.blocks[i].ref_count == 1 for i in again.block_ids)


def test_never_the_whole_prompt_is_served_from_cache() -> None:
    pool = BlockPool(num_blocks=8, block_size=BLOCK_SIZE)
    prompt = list(range(8))  # exactly 2 full blocks
    prefill(pool, make_request("a", prompt))
    computed = pool.get_computed_blocks(make_request("b", prompt))
    assert computed.num_tokens == 4  # the last block is recomputed for the last logits


def test_only_computed_full_blocks_are_cached() -> None:
    pool = BlockPool(num_blocks=8, block_size=BLOCK_SIZE)
    request = make_request("a", list(range(11)))
    assert pool.allocate_slots(request, 6)  # a prefill chunk of 6 tokens
    request.num_computed_tokens = 6
    pool.cache_full_blocks(request)
    assert pool.num_cached_blocks == 1
    assert pool.get_computed_blocks(make_request("b", list(range(11)))).num_tokens == 4


def test_chained_hash_depends_on_parent() -> None:
    tokens = (1, 2, 3, 4)
    assert hash_block(None, tokens) == hash_block(None, tokens)
    assert hash_block(None, tokens) != hash_block(hash_block(None, (9, 9, 9, 9)), tokens)
    pool = BlockPool(num_blocks=16, block_size=BLOCK_SIZE)
    prefill(pool, make_request("a", [9, 9, 9, 9, 1, 2, 3, 4, 0]))
    # same second block under a different first block: no hit at all
    computed = pool.get_computed_blocks(make_request("b", [8, 8, 8, 8, 1, 2, 3, 4, 0]))
    assert computed.num_tokens == 0


def test_media_content_hash_separates_identical_placeholders() -> None:
    pool = BlockPool(num_blocks=16, block_size=BLOCK_SIZE)
    prompt = [5, 0, 0, 0, 0, 0, 0, 6, 7]  # placeholder id 0 at positions 1..6

    def with_image(request_id: str, content_hash: str) -> Request:
        return make_request(request_id, prompt, mm_spans=(MultiModalSpan(1, 6, content_hash),))

    prefill(pool, with_image("a", "cat"))
    assert pool.get_computed_blocks(with_image("b", "dog")).num_tokens == 0
    assert pool.get_computed_blocks(with_image("c", "cat")).num_tokens == 8
    assert pool.get_computed_blocks(make_request("d", prompt)).num_tokens == 0


def test_extra_keys_cover_only_overlapping_spans_and_the_adapter() -> None:
    spans = (MultiModalSpan(2, 3, "x"), MultiModalSpan(6, 4, "y"))
    request = make_request("a", list(range(12)), mm_spans=spans, adapter_id="lora-1")
    assert block_extra_keys(request, 0, 4) == (("x", 2), ("adapter", "lora-1"))
    assert block_extra_keys(request, 4, 8) == (("x", -2), ("y", 2), ("adapter", "lora-1"))
    assert block_extra_keys(request, 8, 12) == (("y", -2), ("adapter", "lora-1"))
    other = make_request("b", list(range(12)), adapter_id="lora-2")
    pool = BlockPool(num_blocks=16, block_size=BLOCK_SIZE)
    prefill(pool, make_request("c", list(range(12)), adapter_id="lora-1"))
    assert pool.get_computed_blocks(other).num_tokens == 0


def test_lru_eviction_order() -> None:
    pool = BlockPool(num_blocks=4, block_size=BLOCK_SIZE)
    old = make_request("old", [1, 1, 1, 1, 1])  # 1 full cached block + 1 partial
    new = make_request("new", [2, 2, 2, 2, 2])
    prefill(pool, old)
    prefill(pool, new)
    pool.free(old)
    pool.free(new)
    # the partial (unhashed) blocks are evicted first, then the least recently freed
    filler = make_request("filler", list(range(100, 112)))  # 3 blocks
    assert pool.allocate_slots(filler, 12)
    assert pool.get_computed_blocks(make_request("x", [1, 1, 1, 1, 1])).num_tokens == 0
    assert pool.get_computed_blocks(make_request("y", [2, 2, 2, 2, 2])).num_tokens == 4
    assert pool.stats.num_evicted_blocks == 1


def test_free_releases_a_requests_tail_before_its_head() -> None:
    pool = BlockPool(num_blocks=3, block_size=BLOCK_SIZE)
    request = make_request("a", list(range(13)))  # 3 full blocks cached, 13th token pending
    assert pool.allocate_slots(request, 12)
    assert request.block_ids == [0, 1, 2]
    request.num_computed_tokens = 12
    pool.cache_full_blocks(request)
    pool.free(request)
    single = make_request("b", [7])
    assert pool.allocate_slots(single, 1)
    assert single.block_ids == [2]  # the request's last block was evicted first
    # the head two blocks still serve a hit
    assert pool.get_computed_blocks(make_request("c", list(range(13)))).num_tokens == 8


def test_reset_prefix_cache_forgets_everything() -> None:
    pool = BlockPool(num_blocks=8, block_size=BLOCK_SIZE)
    prompt = list(range(9))
    prefill(pool, make_request("a", prompt))
    pool.reset_prefix_cache()
    assert pool.num_cached_blocks == 0
    assert pool.get_computed_blocks(make_request("b", prompt)).num_tokens == 0


def test_duplicate_content_computed_twice_keeps_first_block_cached() -> None:
    pool = BlockPool(num_blocks=8, block_size=BLOCK_SIZE)
    prompt = list(range(5))
    first, second = make_request("a", prompt), make_request("b", prompt)
    for request in (first, second):  # both admitted before either is cached
        assert pool.allocate_slots(request, 5, pool.get_computed_blocks(request))
    for request in (first, second):
        request.num_computed_tokens = 5
        pool.cache_full_blocks(request)
    assert pool.num_cached_blocks == 1
    hit = pool.get_computed_blocks(make_request("c", prompt))
    assert [b.block_id for b in hit.blocks] == first.block_ids[:1]
    pool.free(first)
    pool.free(second)
    assert pool.num_free_blocks == 8
