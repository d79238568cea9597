"""ALiBi in the torch reference paged attention vs a dense float64 reference, and the slopes
vs the HF families that use them (Bloom and Falcon-RW: the paper's; MPT: its own)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

from kernels.alibi import alibi_slopes, mpt_alibi_slopes
from kernels.metadata import AttentionMetadata
from kernels.torch_attention import paged_attention
from tests.kernels.paged_batch import MIXED, make_paged_batch

HEADS = [(4, 4), (8, 2), (6, 3), (4, 1)]  # MHA, GQA 4, a head count off a power of two, MQA


@pytest.mark.parametrize("num_heads", [1, 2, 4, 6, 8, 12, 16, 20])
def test_slopes_are_blooms(num_heads):
    torch.testing.assert_close(alibi_slopes(num_heads), _get_alibi_slopes(num_heads, "cpu"))


@pytest.mark.parametrize("num_heads", [1, 4, 6, 8, 12])
@pytest.mark.parametrize("bias_max", [8.0, 4.0])
def test_slopes_are_mpts(num_heads, bias_max):
    # HF's tensor is slope * (k - (S - 1)) for k = 0..S-1: at k = S - 2 it is -slope
    hf = build_mpt_alibi_tensor(num_heads, 2, alibi_bias_max=bias_max)[:, 0, 0]
    torch.testing.assert_close(mpt_alibi_slopes(num_heads, bias_max), -hf)


@pytest.mark.parametrize("block_size", [1, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
@pytest.mark.parametrize("window", [None, 5])
def test_alibi_matches_dense(block_size, num_heads, num_kv_heads, window):
    batch = make_paged_batch(
        *MIXED, block_size=block_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=16, v_head_dim=16, seed=block_size,
    )  # fmt: skip
    slopes = alibi_slopes(num_heads) * 4.0  # steep, so that the bias decides a lot
    out = paged_attention(
        batch.query, batch.k_cache, batch.v_cache, batch.meta,
        scale=0.25, sliding_window=window, alibi_slopes=slopes,
    )  # fmt: skip
    want = batch.dense(0.25, window=window, alibi_slopes=slopes)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    assert (want - batch.dense(0.25, window=window)).abs().max() > 1e-2, "ALiBi must matter"


def test_alibi_with_soft_cap_matches_dense():
    batch = make_paged_batch(
        *MIXED, block_size=4, num_heads=4, num_kv_heads=2, head_dim=16, v_head_dim=16, seed=3
    )
    slopes = alibi_slopes(4)
    out = paged_attention(
        batch.query * 4, batch.k_cache, batch.v_cache, batch.meta,
        scale=0.25, logits_soft_cap=2.0, alibi_slopes=slopes,
    )  # fmt: skip
    batch.query.mul_(4)
    want = batch.dense(0.25, soft_cap=2.0, alibi_slopes=slopes)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)


def test_decode_alone_equals_decode_batched():
    """ALiBi depends on positions only: a decode's row is the same alone and in a batch."""
    batch = make_paged_batch(
        *MIXED, block_size=4, num_heads=8, num_kv_heads=2, head_dim=16, v_head_dim=16, seed=5
    )
    slopes = alibi_slopes(8)
    both = paged_attention(
        batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=0.25, alibi_slopes=slopes
    )
    last = batch.meta.num_tokens - 1  # the last request: one token at position 63
    table = batch.meta.block_table[-1].tolist()
    meta = AttentionMetadata.build([1], [64], [table], 4)
    alone = paged_attention(
        batch.query[last:], batch.k_cache, batch.v_cache, meta, scale=0.25, alibi_slopes=slopes
    )
    torch.testing.assert_close(alone, both[last:], atol=1e-6, rtol=1e-6)
