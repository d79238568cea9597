"""The attention layer over engine steps, the KV writes, and the layout the backends own."""

from __future__ import annotations

import pytest
import torch

from kernels import flash
from kernels.attention import AttentionBackend, PagedAttention, backend_for, write_kv_cache
from kernels.forward_context import ForwardContext, forward_context
from kernels.metadata import AttentionMetadata
from tests.kernels.dense_attention import naive_attention

HEAD_DIM = 16


# ---------------------------------------------------------------- KV writes


def test_write_kv_cache_places_rows_in_their_slots():
    k_cache = torch.zeros(6, 4, 2, 3)
    v_cache = torch.zeros(6, 4, 2, 3)
    key = torch.arange(1, 4, dtype=torch.float32)[:, None, None].expand(3, 2, 3).clone()
    value = -key
    write_kv_cache(key, value, k_cache, v_cache, torch.tensor([5, 22, 0]))
    assert torch.equal(k_cache[1, 1], key[0]) and torch.equal(v_cache[1, 1], value[0])
    assert torch.equal(k_cache[5, 2], key[1]) and torch.equal(v_cache[5, 2], value[1])
    assert torch.equal(k_cache[0, 0], key[2]) and torch.equal(v_cache[0, 0], value[2])
    assert k_cache.abs().sum() == key.abs().sum()  # nothing else written


def test_write_kv_cache_refuses_a_non_contiguous_cache():
    k_cache = torch.zeros(4, 2, 4, 3).transpose(1, 2)  # [4, 4, 2, 3] but strided
    with pytest.raises(RuntimeError):
        write_kv_cache(
            torch.ones(1, 2, 3), torch.ones(1, 2, 3), k_cache, k_cache, torch.tensor([0])
        )


# ---------------------------------------------------------------- the layer, step by step


def test_paged_attention_layer_over_engine_steps():
    """Chunked prefill, then decode steps mixed with a new request, two layers, as a runner would."""
    torch.manual_seed(0)
    num_heads, num_kv_heads, block_size, window = 6, 2, 4, 10
    layers = [
        PagedAttention(num_heads, num_kv_heads, HEAD_DIM, 0.25, layer_idx=i, sliding_window=w)
        for i, w in enumerate([None, window])
    ]
    shape = (16, block_size, num_kv_heads, HEAD_DIM)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in layers]
    tables = [[3, 9, 1, 12, 5], [7, 2, 14]]
    total = [17, 9]
    keys = [torch.randn(n, num_kv_heads, HEAD_DIM) for n in total]
    values = [torch.randn(n, num_kv_heads, HEAD_DIM) for n in total]
    queries = [torch.randn(n, num_heads, HEAD_DIM) for n in total]
    # (request, first position, new tokens) per step: chunked prefill of request 0, then
    # request 1 arrives in one chunk while request 0 decodes
    steps = [[(0, 0, 8)], [(0, 8, 7)], [(0, 15, 1), (1, 0, 9)], [(0, 16, 1)]]
    for step in steps:
        reqs = [r for r, _, _ in step]
        meta = AttentionMetadata.build(
            [n for _, _, n in step],
            [p + n for _, p, n in step],
            [tables[r] for r in reqs],
            block_size,
        )
        sl = [slice(p, p + n) for _, p, n in step]
        q = torch.cat([queries[r][s] for r, s in zip(reqs, sl, strict=True)])
        k = torch.cat([keys[r][s] for r, s in zip(reqs, sl, strict=True)])
        v = torch.cat([values[r][s] for r, s in zip(reqs, sl, strict=True)])
        with forward_context(ForwardContext(meta, caches)):
            outs = [layer(q, k, v) for layer in layers]
        for layer, out in zip(layers, outs, strict=True):
            want = torch.cat(
                [
                    naive_attention(
                        queries[r][s],
                        keys[r][: s.stop],
                        values[r][: s.stop],
                        0.25,
                        layer.sliding_window,
                    )
                    for r, s in zip(reqs, sl, strict=True)
                ]
            )
            torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
            assert layer.backend is AttentionBackend.TORCH


def test_layer_writes_only_its_own_cache():
    layer = PagedAttention(2, 1, HEAD_DIM, 1.0, layer_idx=1)
    caches = [(torch.zeros(2, 4, 1, HEAD_DIM), torch.zeros(2, 4, 1, HEAD_DIM)) for _ in range(2)]
    meta = AttentionMetadata.build([3], [3], [[1]], 4)
    with forward_context(ForwardContext(meta, caches)):
        layer(torch.randn(3, 2, HEAD_DIM), torch.ones(3, 1, HEAD_DIM), torch.ones(3, 1, HEAD_DIM))
    assert caches[0][0].abs().sum() == 0 and caches[0][1].abs().sum() == 0
    assert torch.equal(caches[1][0][1, :3], torch.ones(3, 1, HEAD_DIM))
    assert caches[1][0][0].abs().sum() == 0 and caches[1][0][1, 3].abs().sum() == 0


def test_layer_needs_a_forward_context():
    layer = PagedAttention(2, 1, HEAD_DIM, 1.0, layer_idx=0)
    with pytest.raises(RuntimeError, match="forward context"):
        layer(torch.randn(1, 2, HEAD_DIM), torch.randn(1, 1, HEAD_DIM), torch.randn(1, 1, HEAD_DIM))


def test_heads_must_divide():
    with pytest.raises(ValueError, match="multiple"):
        PagedAttention(6, 4, HEAD_DIM, 1.0, layer_idx=0)


# ---------------------------------------------------------------- the layout the backends own


@pytest.mark.parametrize("backend", list(AttentionBackend))
def test_backend_reports_the_layout_the_kernels_read(backend):
    block_size = flash.PAGED_BLOCK_MULTIPLE  # valid for every backend
    assert backend.kv_cache_shape(7, block_size, 2, HEAD_DIM) == (7, block_size, 2, HEAD_DIM)


@pytest.mark.parametrize("backend", list(AttentionBackend))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bytes_per_block_is_k_and_v_of_one_block(backend, dtype):
    block_size, num_kv_heads = 2 * backend.block_size_multiple, 3
    one_block = torch.zeros(backend.kv_cache_shape(1, block_size, num_kv_heads, 8), dtype=dtype)
    got = backend.kv_cache_bytes_per_block(block_size, num_kv_heads, 8, dtype)
    assert got == 2 * one_block.element_size() * one_block.numel()
    assert got == 2 * block_size * num_kv_heads * 8 * dtype.itemsize


def test_flash_backend_demands_its_block_size_multiple():
    assert AttentionBackend.TORCH.block_size_multiple == 1
    assert AttentionBackend.FLASH_ATTN.block_size_multiple == flash.PAGED_BLOCK_MULTIPLE
    assert AttentionBackend.TORCH.kv_cache_shape(4, 16, 2, 64) == (4, 16, 2, 64)
    with pytest.raises(ValueError, match="multiple of 256"):
        AttentionBackend.FLASH_ATTN.kv_cache_shape(4, 16, 2, 64)
    with pytest.raises(ValueError, match="positive"):
        AttentionBackend.TORCH.kv_cache_shape(4, 0, 2, 64)


@pytest.mark.parametrize("block_size", [1, 16, 256, 512])
def test_backend_for_picks_only_a_backend_whose_layout_fits(monkeypatch, block_size):
    def varlen_func(q, k, v, block_table=None):
        raise AssertionError("not called")

    monkeypatch.setattr(flash, "_load_varlen_func", lambda: varlen_func)
    cuda = torch.device("cuda")
    backend = backend_for(cuda, torch.bfloat16, 64, block_size)
    fits = block_size % flash.PAGED_BLOCK_MULTIPLE == 0
    assert backend is (AttentionBackend.FLASH_ATTN if fits else AttentionBackend.TORCH)
    assert backend.kv_cache_shape(2, block_size, 1, 64) == (2, block_size, 1, 64)
    assert backend_for(torch.device("cpu"), torch.bfloat16, 64, block_size) is (
        AttentionBackend.TORCH
    )
