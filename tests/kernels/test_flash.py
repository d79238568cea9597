"""The flash-attn fast path agrees with the torch reference (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from kernels import flash
from kernels.alibi import alibi_slopes
from kernels.attention import AttentionBackend, PagedAttention, write_kv_cache
from kernels.forward_context import ForwardContext, forward_context
from kernels.metadata import AttentionMetadata
from kernels.torch_attention import paged_attention


def test_not_selected_without_cuda_or_for_float32():
    assert not flash.is_supported(torch.device("cpu"), torch.bfloat16, 64, 256)
    assert not flash.is_supported(torch.device("cuda"), torch.float32, 64, 256)
    assert not flash.is_supported(torch.device("cuda"), torch.bfloat16, 64, 16)


def test_layer_picks_the_reference_on_cpu_once():
    layer = PagedAttention(2, 1, 8, 1.0, layer_idx=0)
    cache = torch.zeros(2, 4, 1, 8)
    meta = AttentionMetadata.build([1], [1], [[1]], 4)
    with forward_context(ForwardContext(meta, [(cache, cache.clone())])):
        layer(torch.randn(1, 2, 8), torch.randn(1, 1, 8), torch.randn(1, 1, 8))
    assert layer.backend is AttentionBackend.TORCH


def fake_varlen_func(calls: list[dict]):
    """Stands in for flash-attn >= 2.6 on CPU: records what the wrapper passes."""

    def flash_attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
        softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
        alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None,
    ):  # fmt: skip
        calls.append({k: v for k, v in locals().items() if k not in ("q", "k", "v")})
        return torch.zeros_like(q)

    return flash_attn_varlen_func


def test_wrapper_translates_metadata_for_flash_attn(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(flash, "_load_varlen_func", lambda: fake_varlen_func(calls))
    meta = AttentionMetadata.build([1, 3], [600, 3], [[4, 1, 6], [2]], block_size=256)
    cache = torch.zeros(8, 256, 1, 8)
    query = torch.zeros(4, 2, 8)
    flash.paged_attention(query, cache, cache, meta, scale=0.5, sliding_window=128)
    flash.paged_attention(query, cache, cache, meta, scale=0.5, logits_soft_cap=30.0)
    first, second = calls
    assert first["cu_seqlens_q"].tolist() == [0, 1, 4]
    assert first["cu_seqlens_k"].tolist() == [0, 600, 603]
    assert first["cu_seqlens_k"].dtype == torch.int32
    assert (first["max_seqlen_q"], first["max_seqlen_k"]) == (3, 600)
    assert first["causal"] and first["softmax_scale"] == 0.5
    assert first["window_size"] == (127, 0)  # HF's p - k < 128 is flash's p - k <= 127
    assert first["softcap"] == 0.0  # not passed at all when off
    assert first["block_table"].tolist() == [[4, 1, 6], [2, 0, 0]]
    assert second["window_size"] == (-1, -1) and second["softcap"] == 30.0


def test_supported_only_with_a_capable_flash_attn(monkeypatch):
    monkeypatch.setattr(flash, "_load_varlen_func", lambda: fake_varlen_func([]))
    cuda = torch.device("cuda")
    assert flash.is_supported(cuda, torch.bfloat16, 128, 256, logits_soft_cap=50.0)
    assert not flash.is_supported(cuda, torch.bfloat16, 128, 16)
    assert not flash.is_supported(cuda, torch.bfloat16, 100, 256)

    def old_flash(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table):
        raise AssertionError("not called")

    monkeypatch.setattr(flash, "_load_varlen_func", lambda: old_flash)
    assert flash.is_supported(cuda, torch.float16, 64, 512)
    assert not flash.is_supported(cuda, torch.float16, 64, 512, logits_soft_cap=50.0)
    assert not flash.is_supported(cuda, torch.float16, 64, 512, uses_alibi=True)


def test_alibi_needs_flash_attn_2_4_and_value_dims_must_equal_key_dims(monkeypatch):
    monkeypatch.setattr(flash, "_load_varlen_func", lambda: fake_varlen_func([]))
    cuda = torch.device("cuda")
    assert flash.is_supported(cuda, torch.bfloat16, 128, 256, uses_alibi=True)
    assert flash.is_supported(cuda, torch.bfloat16, 128, 256, v_head_dim=128)
    assert not flash.is_supported(cuda, torch.bfloat16, 192, 256, v_head_dim=128)  # MLA


def test_wrapper_passes_alibi_slopes_as_float32(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(flash, "_load_varlen_func", lambda: fake_varlen_func(calls))
    meta = AttentionMetadata.build([1], [3], [[1]], block_size=256)
    cache = torch.zeros(2, 256, 2, 8, dtype=torch.bfloat16)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    query = torch.zeros(1, 4, 8, dtype=torch.bfloat16)
    flash.paged_attention(query, cache, cache, meta, scale=0.5, alibi_slopes=slopes)
    flash.paged_attention(query, cache, cache, meta, scale=0.5)
    with_alibi, without = calls
    assert with_alibi["alibi_slopes"].dtype == torch.float32
    assert with_alibi["alibi_slopes"].tolist() == slopes.tolist()
    assert without["alibi_slopes"] is None  # not passed at all when off


needs_flash = pytest.mark.skipif(
    not torch.cuda.is_available() or flash._load_varlen_func() is None,
    reason="needs CUDA and flash-attn",
)


@pytest.mark.cuda
@needs_flash
@pytest.mark.parametrize("window", [None, 100])
@pytest.mark.parametrize("soft_cap", [None, 30.0])
@pytest.mark.parametrize("alibi", [False, True])
def test_flash_matches_reference(window, soft_cap, alibi):
    torch.manual_seed(0)
    device, dtype, block_size = torch.device("cuda"), torch.bfloat16, flash.PAGED_BLOCK_MULTIPLE
    num_heads, num_kv_heads, head_dim = 8, 2, 64
    query_lens, seq_lens = [1, 300, 1, 64], [700, 300, 2, 600]
    tables = [[4, 1, 6], [2, 9], [3], [8, 5, 7]]
    shape = (10, block_size, num_kv_heads, head_dim)
    k_cache = torch.zeros(shape, dtype=dtype, device=device)
    v_cache = torch.zeros(shape, dtype=dtype, device=device)
    everything = AttentionMetadata.build(seq_lens, seq_lens, tables, block_size, device)
    total = sum(seq_lens)
    write_kv_cache(
        torch.randn(total, num_kv_heads, head_dim, dtype=dtype, device=device),
        torch.randn(total, num_kv_heads, head_dim, dtype=dtype, device=device),
        k_cache,
        v_cache,
        everything.slot_mapping,
    )
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size, device)
    query = torch.randn(sum(query_lens), num_heads, head_dim, dtype=dtype, device=device)
    kwargs = {"scale": head_dim**-0.5, "sliding_window": window, "logits_soft_cap": soft_cap}
    kwargs["alibi_slopes"] = alibi_slopes(num_heads).to(device) if alibi else None
    got = flash.paged_attention(query, k_cache, v_cache, meta, **kwargs)
    want = paged_attention(query, k_cache, v_cache, meta, **kwargs)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    assert flash.is_supported(device, dtype, head_dim, block_size)
