"""Bidirectional ranges (Gemma 3's images, PaliGemma's prefix) in the paged attention kernels,
against dense attention on HF's own block masks; chunk boundaries inside a range included."""

from __future__ import annotations

import pytest
import torch

from kernels import flash
from kernels.metadata import AttentionMetadata
from kernels.torch_attention import paged_attention
from tests.kernels.dense_attention import naive_attention
from tests.kernels.test_torch_attention import HEAD_DIM, Batch, make_batch

SCALE = HEAD_DIM**-0.5
# one 30-token request: text, an "image" [4, 14), text, a second image [17, 26), text
IMAGES = ((4, 14), (17, 26))


def _with_ranges(batch: Batch, ranges: list[tuple[tuple[int, int], ...]]) -> AttentionMetadata:
    meta = batch.meta
    tables = [meta.block_table[i, : -(-n // 4)].tolist() for i, n in enumerate(meta.seq_lens_cpu)]
    return AttentionMetadata.build(
        batch.query_lens, list(meta.seq_lens_cpu), tables, 4, bidirectional_ranges=ranges
    )


def _dense(batch: Batch, ranges, window=None, soft_cap=None) -> torch.Tensor:
    outs, start = [], 0
    for q_len, k, v, request_ranges in zip(
        batch.query_lens, batch.keys, batch.values, ranges, strict=True
    ):
        q = batch.query[start : start + q_len]
        outs.append(naive_attention(q, k, v, SCALE, window, soft_cap, request_ranges))
        start += q_len
    return torch.cat(outs)


def _ours(batch: Batch, meta: AttentionMetadata, window=None, soft_cap=None, kernel=None):
    attend = kernel or paged_attention
    return attend(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        meta,
        scale=SCALE,
        sliding_window=window,
        logits_soft_cap=soft_cap,
    ).double()


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (4, 2), (8, 2)])
@pytest.mark.parametrize("window", [None, 5, 1000])
@pytest.mark.parametrize("soft_cap", [None, 3.0])
def test_whole_prompt_matches_dense(num_heads, num_kv_heads, window, soft_cap):
    batch = make_batch([30], [30], 4, num_heads, num_kv_heads, seed=1)
    meta = _with_ranges(batch, [IMAGES])
    assert meta.has_bidirectional
    want = _dense(batch, [IMAGES], window, soft_cap)
    torch.testing.assert_close(_ours(batch, meta, window, soft_cap), want, atol=1e-5, rtol=1e-5)
    causal = _dense(batch, [()], window, soft_cap)
    assert (want - causal).abs().max() > 1e-2, "the ranges should change the result"


@pytest.mark.parametrize("first", [0, 4, 9, 14, 17, 20, 26])
@pytest.mark.parametrize("window", [None, 5])
def test_a_chunk_may_start_inside_a_range(first, window):
    """A chunk [first, 30): its queries inside an image see all of that image's keys, those
    computed by earlier chunks (or a prefix-cache hit) and the later ones alike."""
    batch = make_batch([30 - first], [30], 4, 4, 2, seed=2)
    meta = _with_ranges(batch, [IMAGES])
    torch.testing.assert_close(
        _ours(batch, meta, window), _dense(batch, [IMAGES], window), atol=1e-5, rtol=1e-5
    )


def test_prefix_range_and_mixed_batch():
    """PaliGemma's prefix (the whole prompt), Gemma 3's images, plain causal and decodes in one
    step; decodes and causal requests are untouched by the others' ranges."""
    query_lens, seq_lens = [1, 12, 1, 30, 7], [20, 12, 9, 30, 15]
    ranges = [(), ((0, 12),), ((2, 6),), IMAGES, ()]
    batch = make_batch(query_lens, seq_lens, 4, 8, 2, seed=3)
    meta = _with_ranges(batch, ranges)
    assert meta.bidirectional_cpu == ((), ((0, 12),), (), IMAGES, ())  # a past range is dropped
    torch.testing.assert_close(_ours(batch, meta), _dense(batch, ranges), atol=1e-5, rtol=1e-5)


def test_a_chunk_must_not_end_inside_a_range():
    with pytest.raises(ValueError, match=r"range \[4, 14\) ends after the step's 10 tokens"):
        AttentionMetadata.build([10], [10], [[0, 1, 2]], 4, bidirectional_ranges=[IMAGES])


def test_ranges_that_change_nothing_are_dropped():
    # decodes, a chunk ending right where a range starts, a range of one token
    meta = AttentionMetadata.build(
        [1, 4, 3],
        [31, 4, 8],
        [[0] * 8, [0], [0, 1]],
        4,
        bidirectional_ranges=[IMAGES, IMAGES, ((6, 7),)],
    )
    assert not meta.has_bidirectional and meta.bidirectional_cpu == ()
    assert meta.bidirectional_of(0) == ()


def test_flash_falls_back_to_the_reference_for_bidirectional_steps(monkeypatch):
    """flash-attn cannot open a range inside a causal mask: such steps run the torch path
    (checked here without flash-attn: the fallback comes before the kernel is looked up)."""
    monkeypatch.setattr(flash, "_load_varlen_func", lambda: None)
    batch = make_batch([1, 30], [20, 30], 4, 4, 2, seed=4)
    meta = _with_ranges(batch, [(), IMAGES])
    torch.testing.assert_close(
        _ours(batch, meta, kernel=flash.paged_attention), _ours(batch, meta), atol=0, rtol=0
    )
    with pytest.raises(RuntimeError, match="flash-attn is not installed"):
        _ours(batch, _with_ranges(batch, [(), ()]), kernel=flash.paged_attention)
