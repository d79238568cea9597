"""The torch reference paged attention vs a naive dense attention built on HF's own masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from kernels.attention import write_kv_cache
from kernels.metadata import AttentionMetadata
from kernels.torch_attention import paged_attention
from tests.kernels.dense_attention import naive_attention

HEAD_DIM = 16


@dataclass
class Batch:
    meta: AttentionMetadata
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    keys: list[torch.Tensor]  # per request [S, Hkv, D]
    values: list[torch.Tensor]
    query: torch.Tensor  # [T, H, D]
    query_lens: list[int]


def allocate_tables(
    seq_lens: list[int], block_size: int, gen: torch.Generator, spare: int = 3
) -> tuple[list[list[int]], int]:
    """Shuffled, non-contiguous block ids; block 0 is never used (padding reads land there)."""
    needed = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(needed) + spare + 1
    ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables, start = [], 0
    for n in needed:
        tables.append(ids[start : start + n])
        start += n
    return tables, num_blocks


def make_batch(
    query_lens: list[int],
    seq_lens: list[int],
    block_size: int,
    num_heads: int,
    num_kv_heads: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    tables, num_blocks = allocate_tables(seq_lens, block_size, gen)
    shape = (num_blocks, block_size, num_kv_heads, HEAD_DIM)
    # garbage everywhere (finite): whatever is not a request's token must be masked out
    k_cache = (torch.randn(shape, generator=gen) * 50).to(dtype)
    v_cache = (torch.randn(shape, generator=gen) * 50).to(dtype)
    keys = [torch.randn(s, num_kv_heads, HEAD_DIM, generator=gen).to(dtype) for s in seq_lens]
    values = [torch.randn(s, num_kv_heads, HEAD_DIM, generator=gen).to(dtype) for s in seq_lens]
    everything = AttentionMetadata.build(seq_lens, seq_lens, tables, block_size)
    write_kv_cache(torch.cat(keys), torch.cat(values), k_cache, v_cache, everything.slot_mapping)
    query = torch.randn(sum(query_lens), num_heads, HEAD_DIM, generator=gen).to(dtype)
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size)
    return Batch(meta, k_cache, v_cache, keys, values, query, list(query_lens))


def expected(batch: Batch, scale: float, window: int | None, soft_cap: float | None):
    outs, start = [], 0
    for q_len, k, v in zip(batch.query_lens, batch.keys, batch.values, strict=True):
        q = batch.query[start : start + q_len]
        outs.append(naive_attention(q, k, v, scale, window, soft_cap))
        start += q_len
    return torch.cat(outs)


# decodes (q_len 1) scattered among prefill chunks with and without a prefix
MIXED = ([1, 13, 1, 6, 1, 9, 1], [37, 13, 5, 20, 1, 30, 64])
HEADS = [(4, 4), (4, 2), (8, 2), (4, 1)]  # MHA, GQA 2, GQA 4, MQA


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
@pytest.mark.parametrize("window", [None, 1, 5, 1000])
def test_mixed_batch_matches_dense(block_size, num_heads, num_kv_heads, window):
    batch = make_batch(*MIXED, block_size, num_heads, num_kv_heads, seed=block_size)
    scale = HEAD_DIM**-0.5
    out = paged_attention(
        batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=scale, sliding_window=window
    )
    torch.testing.assert_close(
        out.double(), expected(batch, scale, window, None), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
@pytest.mark.parametrize("window", [None, 5])
def test_soft_cap_matches_dense(block_size, num_heads, num_kv_heads, window):
    batch = make_batch(*MIXED, block_size, num_heads, num_kv_heads, seed=7)
    batch.query.mul_(4.0)  # large scores so that the cap bites
    scale = HEAD_DIM**-0.5
    out = paged_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.meta,
        scale=scale,
        sliding_window=window,
        logits_soft_cap=2.0,
    )
    want = expected(batch, scale, window, 2.0)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    uncapped = expected(batch, scale, window, None)
    assert (want - uncapped).abs().max() > 1e-2, "the cap should change the result"


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    num_reqs = int(torch.randint(1, 9, (1,), generator=gen))
    seq_lens = torch.randint(1, 80, (num_reqs,), generator=gen).tolist()
    kinds = torch.randint(0, 3, (num_reqs,), generator=gen).tolist()  # decode, chunk, whole
    query_lens = [
        1 if kind == 0 else s if kind == 2 else int(torch.randint(1, s + 1, (1,), generator=gen))
        for kind, s in zip(kinds, seq_lens, strict=True)
    ]
    num_kv_heads = [1, 2, 3][seed % 3]
    num_heads = num_kv_heads * [1, 2, 4][seed // 2 % 3]
    block_size = [1, 4, 16, 5][seed % 4]
    window = [None, 7, 33][seed % 3]
    batch = make_batch(query_lens, seq_lens, block_size, num_heads, num_kv_heads, seed=seed)
    scale = 0.3
    out = paged_attention(
        batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=scale, sliding_window=window
    )
    torch.testing.assert_close(
        out.double(), expected(batch, scale, window, None), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("order", ["decodes_first", "prefills_first", "all_decodes"])
def test_decode_span_and_gather_paths_agree(order):
    """Consecutive decodes are sliced, scattered ones gathered: both must be right."""
    lens = {
        "decodes_first": ([1, 1, 1, 5, 8], [9, 40, 17, 5, 30]),
        "prefills_first": ([5, 8, 1, 1, 1], [5, 30, 9, 40, 17]),
        "all_decodes": ([1] * 6, [3, 50, 17, 1, 64, 65]),
    }[order]
    batch = make_batch(*lens, block_size=16, num_heads=8, num_kv_heads=2, seed=3)
    out = paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=0.25)
    torch.testing.assert_close(
        out.double(), expected(batch, 0.25, None, None), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("soft_cap", [None, 20.0])
def test_bfloat16_close_to_dense(soft_cap):
    batch = make_batch(*MIXED, 16, 8, 2, dtype=torch.bfloat16, seed=11)
    scale = HEAD_DIM**-0.5
    out = paged_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.meta,
        scale=scale,
        sliding_window=9,
        logits_soft_cap=soft_cap,
    )
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.double(), expected(batch, scale, 9, soft_cap), atol=3e-2, rtol=3e-2
    )


def test_requests_do_not_see_each_other():
    """Changing one request's cached K/V changes only that request's output rows."""
    batch = make_batch(*MIXED, 4, 4, 2, seed=5)
    before = paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=0.5)
    table = batch.meta.block_table[3, : math.ceil(20 / 4)]
    batch.v_cache[table.long()] += 1.0
    after = paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=0.5)
    rows = torch.zeros(batch.query.shape[0], dtype=torch.bool)
    start = batch.meta.query_start_loc_cpu
    rows[start[3] : start[4]] = True
    assert torch.equal(before[~rows], after[~rows])
    assert not torch.allclose(before[rows], after[rows])


@pytest.mark.parametrize("layout", ["fused_qkv_slice", "hf_transposed"])
@pytest.mark.parametrize("query_lens", [MIXED[0], [1] * len(MIXED[0])])
def test_query_may_be_strided(layout, query_lens):
    batch = make_batch(query_lens, MIXED[1], 4, 8, 2, seed=9)
    num_tokens = batch.query.shape[0]
    if layout == "fused_qkv_slice":  # q of a fused QKV projection: rows have a gap
        qkv = torch.randn(num_tokens, (8 + 2 * 2) * HEAD_DIM)
        qkv[:, : 8 * HEAD_DIM] = batch.query.reshape(num_tokens, -1)
        query = qkv[:, : 8 * HEAD_DIM].view(num_tokens, 8, HEAD_DIM)
    else:  # HF's [1, H, T, D] seen as [T, H, D]
        query = batch.query.transpose(0, 1).contiguous()[None][0].transpose(0, 1)
    assert not query.is_contiguous()
    out = paged_attention(query, batch.k_cache, batch.v_cache, batch.meta, scale=0.25)
    assert out.is_contiguous()
    torch.testing.assert_close(
        out.double(), expected(batch, 0.25, None, None), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_is_batch_invariant(dtype):
    """A decode's output is bit-identical alone and next to much longer sequences."""
    batch = make_batch([1, 1, 1], [37, 700, 1500], 16, 8, 2, dtype=dtype, seed=4)
    alone_meta = AttentionMetadata.build(
        [1], [37], [batch.meta.block_table[0, :3].tolist()], block_size=16
    )
    alone = paged_attention(batch.query[:1], batch.k_cache, batch.v_cache, alone_meta, scale=0.25)
    both = paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=0.25)
    assert torch.equal(alone[0], both[0])


def test_empty_step():
    meta = AttentionMetadata.build([], [], [], block_size=4)
    cache = torch.zeros(2, 4, 1, HEAD_DIM)
    out = paged_attention(torch.zeros(0, 2, HEAD_DIM), cache, cache, meta, scale=1.0)
    assert out.shape == (0, 2, HEAD_DIM)


@pytest.mark.parametrize("soft_cap", [None, 20.0])
def test_whole_prefills_attend_the_new_rows(soft_cap):
    """With `new_kv`, a whole-sequence prefill reads the step's rows, not the cache; chunks with
    a prefix and decodes still gather from the cache."""
    batch = make_batch(*MIXED, 16, 8, 2, seed=5)
    rows_k, rows_v = [], []
    for req, (q_len, k, v) in enumerate(
        zip(batch.query_lens, batch.keys, batch.values, strict=True)
    ):
        if q_len > 1 and q_len == k.shape[0]:  # whole prefill: its cache blocks turn garbage
            blocks = batch.meta.block_table[req, : -(-q_len // 16)].long()
            batch.k_cache[blocks] = 1e4
            batch.v_cache[blocks] = 1e4
            rows_k.append(k)
            rows_v.append(v)
        else:  # read from the cache: garbage rows here must not be used
            rows_k.append(torch.full_like(k[-q_len:], 1e4))
            rows_v.append(torch.full_like(v[-q_len:], 1e4))
    out = paged_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.meta,
        scale=0.25,
        logits_soft_cap=soft_cap,
        new_kv=(torch.cat(rows_k), torch.cat(rows_v)),  # [T, Hkv, D] each
    )
    torch.testing.assert_close(
        out.double(), expected(batch, 0.25, None, soft_cap), atol=1e-5, rtol=1e-5
    )
