"""KV cache sizing and allocation: the engine's block count over the backend's layout."""

from __future__ import annotations

import pytest
import torch

from kernels.attention import AttentionBackend
from lm_service.engine.kv_cache import allocate_kv_caches, bytes_per_block, num_blocks_for
from lm_service.models.base import KVCacheSpec
from protos.errors import InvalidRequest

SPEC = KVCacheSpec(
    num_layers=3, num_kv_heads=2, head_dim=8, dtype=torch.float16, sliding_windows=(None,) * 3
)
TORCH = AttentionBackend.TORCH


def test_allocates_the_shape_the_backend_reports():
    caches = allocate_kv_caches(SPEC, TORCH, 5, 4, torch.device("cpu"))
    assert len(caches) == SPEC.num_layers
    want = TORCH.kv_cache_shape(5, 4, SPEC.num_kv_heads, SPEC.head_dim)
    for k_cache, v_cache in caches:
        assert tuple(k_cache.shape) == tuple(v_cache.shape) == want
        assert k_cache.dtype == v_cache.dtype == SPEC.dtype
        assert k_cache.is_contiguous() and v_cache.is_contiguous()  # write_kv_cache views them
        assert not k_cache.any() and not v_cache.any()  # zeroed: padded reads must be finite
        assert k_cache.data_ptr() != v_cache.data_ptr()
    assert len({k.data_ptr() for k, _ in caches}) == SPEC.num_layers


def test_bytes_per_block_is_what_one_block_of_every_layer_takes():
    num_blocks, block_size = 5, 4
    caches = allocate_kv_caches(SPEC, TORCH, num_blocks, block_size, torch.device("cpu"))
    total = sum(k.nbytes + v.nbytes for k, v in caches)
    assert bytes_per_block(SPEC, TORCH, block_size) * num_blocks == total


def test_num_blocks_fit_the_memory_budget():
    block = bytes_per_block(SPEC, TORCH, 4)
    assert (
        num_blocks_for(SPEC, TORCH, 4, memory=10 * block + block - 1, max_useful_tokens=1000) == 10
    )


def test_num_blocks_capped_at_what_could_ever_be_used():
    block = bytes_per_block(SPEC, TORCH, 4)
    assert num_blocks_for(SPEC, TORCH, 4, memory=100 * block, max_useful_tokens=9) == 3


def test_a_budget_below_one_block_is_a_user_error():
    block = bytes_per_block(SPEC, TORCH, 4)
    with pytest.raises(InvalidRequest, match="--kv-cache-memory"):
        num_blocks_for(SPEC, TORCH, 4, memory=block - 1, max_useful_tokens=1000)


def test_flash_layout_refuses_a_block_size_it_cannot_read():
    with pytest.raises(ValueError, match="multiple of 256"):
        allocate_kv_caches(SPEC, AttentionBackend.FLASH_ATTN, 2, 16, torch.device("cpu"))


def test_values_get_their_own_head_dim():
    spec = KVCacheSpec(2, 2, 12, torch.float32, (None, None), v_head_dim=8)
    caches = allocate_kv_caches(spec, TORCH, 5, 4, torch.device("cpu"))
    for k_cache, v_cache in caches:
        assert tuple(k_cache.shape) == (5, 4, 2, 12) and tuple(v_cache.shape) == (5, 4, 2, 8)
        assert v_cache.is_contiguous()
    total = sum(k.nbytes + v.nbytes for k, v in caches)
    assert bytes_per_block(spec, TORCH, 4) * 5 == total


def test_a_latent_cache_keeps_no_value_tensor():
    """MLA: one tensor per layer; V is a view of its first lanes and costs nothing more."""
    spec = KVCacheSpec(2, 1, 40, torch.float32, (None, None), v_head_dim=32, values_in_keys=True)
    caches = allocate_kv_caches(spec, TORCH, 5, 4, torch.device("cpu"))
    for k_cache, v_cache in caches:
        assert tuple(k_cache.shape) == (5, 4, 1, 40) and tuple(v_cache.shape) == (5, 4, 1, 32)
        assert v_cache.data_ptr() == k_cache.data_ptr()
        k_cache[1, 2, 0, 3] = 7.0
        assert v_cache[1, 2, 0, 3] == 7.0
    assert bytes_per_block(spec, TORCH, 4) * 5 == sum(k.nbytes for k, _ in caches)


def test_values_inside_keys_must_fit_there():
    with pytest.raises(ValueError, match="v_head_dim <= head_dim"):
        KVCacheSpec(1, 1, 8, torch.float32, (None,), v_head_dim=9, values_in_keys=True)
