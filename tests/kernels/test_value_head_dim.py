"""The torch reference paged attention when V's head dim differs from Q/K's (MLA), with its
own V cache or with V read as the first lanes of a latent K cache, vs dense float64."""

from __future__ import annotations

import pytest
import torch

from kernels.attention import write_cache, write_kv_cache
from kernels.metadata import AttentionMetadata
from kernels.torch_attention import paged_attention
from tests.kernels.paged_batch import MIXED, make_paged_batch


@pytest.mark.parametrize("block_size", [1, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize(("head_dim", "v_head_dim"), [(24, 16), (16, 40)])
@pytest.mark.parametrize("window", [None, 5])
def test_separate_value_cache_matches_dense(
    block_size, num_heads, num_kv_heads, head_dim, v_head_dim, window
):
    batch = make_paged_batch(
        *MIXED, block_size=block_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, v_head_dim=v_head_dim, seed=block_size,
    )  # fmt: skip
    out = paged_attention(
        batch.query, batch.k_cache, batch.v_cache, batch.meta, scale=0.2, sliding_window=window
    )
    assert out.shape == (batch.meta.num_tokens, num_heads, v_head_dim)
    torch.testing.assert_close(out.double(), batch.dense(0.2, window=window), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("soft_cap", [None, 3.0])
def test_latent_cache_reads_values_from_the_keys(soft_cap):
    """MLA's latent layout: one tensor [blocks, bs, 1, lora + rope]; V = its first lora lanes."""
    lora, rope, num_heads = 32, 8, 4
    batch = make_paged_batch(
        *MIXED, block_size=4, num_heads=num_heads, num_kv_heads=1,
        head_dim=lora + rope, v_head_dim=lora, seed=1,
    )  # fmt: skip
    latent_cache = batch.k_cache
    batch.values = [k[..., :lora] for k in batch.keys]
    values_view = latent_cache[..., :lora]
    assert not values_view.is_contiguous()
    out = paged_attention(
        batch.query, latent_cache, values_view, batch.meta, scale=0.2, logits_soft_cap=soft_cap
    )
    want = batch.dense(0.2, soft_cap=soft_cap)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)


def test_writes_respect_each_caches_head_dim():
    meta = AttentionMetadata.build([3], [3], [[2]], 4)
    k_cache, v_cache = torch.zeros(3, 4, 2, 6), torch.zeros(3, 4, 2, 4)
    key, value = torch.randn(3, 2, 6), torch.randn(3, 2, 4)
    write_kv_cache(key, value, k_cache, v_cache, meta.slot_mapping)
    assert torch.equal(k_cache[2, :3], key) and torch.equal(v_cache[2, :3], value)
    latent = torch.zeros(3, 4, 1, 6)
    write_cache(key[:, :1], latent, meta.slot_mapping)
    assert torch.equal(latent[2, :3], key[:, :1]) and not latent[:2].any()
