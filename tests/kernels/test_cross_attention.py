"""Cross-attention over the paged encoder K/V cache equals dense attention per request."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import cross_attention as xattn
from kernels.cross_attention import CrossAttention, CrossAttentionMetadata
from kernels.forward_context import ForwardContext, forward_context
from kernels.metadata import AttentionMetadata

H, HKV, D, BS = 4, 2, 8, 4


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [L, H, D], k/v [S, Hkv, D] -> [L, H, D]: every query sees every key."""
    k = k.repeat_interleave(H // HKV, dim=1)
    v = v.repeat_interleave(H // HKV, dim=1)
    scores = torch.einsum("lhd,shd->hls", q, k) * scale
    return torch.einsum("hls,shd->lhd", scores.softmax(-1), v)


def _scattered_tables(enc_lens: list[int]) -> list[list[int]]:
    """Non-contiguous, interleaved block ids, so a wrong table index reads someone else's K/V."""
    needs = [-(-n // BS) for n in enc_lens]
    ids = list(range(1, sum(needs) + 1))[::-1]
    return [[ids.pop() for _ in range(n)][::-1] for n in needs]


@pytest.mark.parametrize("query_lens", [[1, 1, 1], [3, 1, 5], [1, 4, 1]])
def test_mixed_steps_equal_dense(query_lens: list[int]) -> None:
    torch.manual_seed(0)
    enc_lens = [7, 12, 5]
    tables = _scattered_tables(enc_lens)
    keys = [torch.randn(n, HKV, D) for n in enc_lens]
    values = [torch.randn(n, HKV, D) for n in enc_lens]
    q = torch.randn(sum(query_lens), H, D)
    k_cache = torch.zeros(1 + sum(len(t) for t in tables), BS, HKV, D)
    v_cache = torch.zeros_like(k_cache)
    # write through the metadata's slot mapping, as the layer does at a request's first step
    meta = CrossAttentionMetadata.build(query_lens, enc_lens, tables, BS, keys)
    xattn.write_kv_cache(torch.cat(keys), torch.cat(values), k_cache, v_cache, meta.slot_mapping)

    out = xattn.cross_attention(q, k_cache, v_cache, meta, scale=D**-0.5)

    starts = meta.query_start_loc_cpu
    for i in range(3):
        expected = _dense(q[starts[i] : starts[i + 1]], keys[i], values[i], D**-0.5)
        torch.testing.assert_close(out[starts[i] : starts[i + 1]], expected)


def test_a_request_without_encoder_states_gets_zeros() -> None:
    meta = CrossAttentionMetadata.build([1, 2], [0, 3], [[], [1]], BS, [None, None])
    k_cache = torch.randn(2, BS, HKV, D)
    out = xattn.cross_attention(torch.randn(3, H, D), k_cache, k_cache.clone(), meta, scale=1.0)
    assert torch.equal(out[0], torch.zeros(H, D))
    assert out[1:].abs().sum() > 0


def test_layer_writes_new_states_once_and_reads_them_later() -> None:
    torch.manual_seed(1)
    layer = CrossAttention(H, HKV, D, D**-0.5, layer_idx=0)
    k, v = torch.randn(6, HKV, D), torch.randn(6, HKV, D)
    caches = [(torch.zeros(3, BS, HKV, D), torch.zeros(3, BS, HKV, D))]
    self_meta = AttentionMetadata.build([2], [2], [[0]], BS)  # unused by cross-attention
    first = CrossAttentionMetadata.build([2], [6], [[2, 1]], BS, [k])
    q = torch.randn(2, H, D)
    with forward_context(
        ForwardContext(self_meta, [], cross_metadata=first, cross_kv_caches=caches)
    ):
        out_first = layer(q, k, v)
    later = CrossAttentionMetadata.build([1], [6], [[2, 1]], BS, [None])
    with forward_context(
        ForwardContext(self_meta, [], cross_metadata=later, cross_kv_caches=caches)
    ):
        out_later = layer(q[1:], None, None)
    torch.testing.assert_close(out_first, _dense(q, k, v, D**-0.5))
    torch.testing.assert_close(out_later, out_first[1:])
    assert layer.use_flash is False  # CPU float32: the reference


def test_build_refuses_a_table_too_short() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        CrossAttentionMetadata.build([1], [9], [[1, 2]], BS, [None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn path needs CUDA")
def test_flash_equals_reference_on_cuda() -> None:
    from kernels import flash

    if flash._load_varlen_func() is None:
        pytest.skip("flash-attn is not installed")
    torch.manual_seed(0)
    block, dtype, dev = 256, torch.bfloat16, torch.device("cuda")
    enc_lens, query_lens = [300, 1500, 0], [1, 4, 1]
    tables = [[1, 2], [3, 4, 5, 6, 7, 8], []]
    keys = [torch.randn(n, HKV, 64, dtype=dtype, device=dev) for n in enc_lens]
    k_cache = torch.zeros(9, block, HKV, 64, dtype=dtype, device=dev)
    v_cache = torch.zeros_like(k_cache)
    meta = CrossAttentionMetadata.build(query_lens, enc_lens, tables, block, keys, device=dev)
    xattn.write_kv_cache(torch.cat(keys), torch.cat(keys) * 2, k_cache, v_cache, meta.slot_mapping)
    q = torch.randn(sum(query_lens), H, 64, dtype=dtype, device=dev)
    fast = xattn.flash_cross_attention(q, k_cache, v_cache, meta, scale=0.125)
    ref = xattn.cross_attention(q, k_cache, v_cache, meta, scale=0.125)
    torch.testing.assert_close(fast, ref, atol=2e-2, rtol=2e-2)  # bf16 accumulation order


def test_reference_is_dense_sdpa_for_one_request() -> None:
    """The batched decode path (padded keys, masked) equals unpadded SDPA bit for bit."""
    torch.manual_seed(2)
    enc_lens = [3, 9]
    tables = _scattered_tables(enc_lens)
    keys = [torch.randn(n, HKV, D) for n in enc_lens]
    k_cache = torch.zeros(1 + sum(len(t) for t in tables), BS, HKV, D)
    v_cache = torch.zeros_like(k_cache)
    meta = CrossAttentionMetadata.build([1, 1], enc_lens, tables, BS, keys)
    xattn.write_kv_cache(torch.cat(keys), torch.cat(keys), k_cache, v_cache, meta.slot_mapping)
    q = torch.randn(2, H, D)
    out = xattn.cross_attention(q, k_cache, v_cache, meta, scale=0.3)
    alone = F.scaled_dot_product_attention(
        q[:1].transpose(0, 1)[None],
        keys[0].transpose(0, 1)[None],
        keys[0].transpose(0, 1)[None],
        scale=0.3,
        enable_gqa=True,
    )[0].transpose(0, 1)
    torch.testing.assert_close(out[:1], alone)


def _masked_dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float
) -> torch.Tensor:
    """As `_dense`, each query row `l` seeing only the keys `allowed[l]` marks."""
    k = k.repeat_interleave(H // HKV, dim=1)
    v = v.repeat_interleave(H // HKV, dim=1)
    scores = torch.einsum("lhd,shd->hls", q, k) * scale
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hls,shd->lhd", scores.softmax(-1), v)


@pytest.mark.parametrize("query_lens", [[1, 1, 1], [4, 1, 3]])
def test_windows_mask_each_token_as_dense_attention(query_lens: list[int]) -> None:
    """Mllama's windows: tokens before the first window attend everything (and are flagged
    no_image), later ones only their window's ranges; a request without windows attends
    all of its states, one without states gets zeros."""
    torch.manual_seed(1)
    enc_lens = [12, 7, 0]
    firsts = [2, 5, 0]  # the position of each request's first new token
    windows = [((3, ((0, 4),)), (5, ((4, 8), (10, 12)))), (), ()]
    tables = [[1, 2, 3], [4, 5], []]
    keys = [torch.randn(n, HKV, D) for n in enc_lens]
    values = [torch.randn(n, HKV, D) for n in enc_lens]
    q = torch.randn(sum(query_lens), H, D)
    k_cache = torch.zeros(6, BS, HKV, D)
    v_cache = torch.zeros_like(k_cache)
    meta = CrossAttentionMetadata.build(
        query_lens, enc_lens, tables, BS, keys[:2] + [None], windows=windows, first_positions=firsts
    )
    xattn.write_kv_cache(
        torch.cat(keys[:2]), torch.cat(values[:2]), k_cache, v_cache, meta.slot_mapping
    )

    out = xattn.cross_attention(q, k_cache, v_cache, meta, scale=D**-0.5)

    starts = meta.query_start_loc_cpu
    for j in range(query_lens[0]):  # request 0: positions 2, 3, 4, 5
        position, allowed = firsts[0] + j, torch.zeros(12, dtype=torch.bool)
        if position < 3:
            allowed[:] = True
        elif position < 5:
            allowed[0:4] = True
        else:
            allowed[4:8] = allowed[10:12] = True
        expected = _masked_dense(q[j : j + 1], keys[0], values[0], allowed[None], D**-0.5)
        torch.testing.assert_close(out[j : j + 1], expected)
        assert bool(meta.no_image[j]) == (position < 3)
    rows = slice(starts[1], starts[2])
    torch.testing.assert_close(out[rows], _dense(q[rows], keys[1], values[1], D**-0.5))
    assert not meta.no_image[rows].any()
    assert torch.equal(out[starts[2] :], torch.zeros_like(out[starts[2] :]))
    assert meta.no_image[starts[2] :].all()
