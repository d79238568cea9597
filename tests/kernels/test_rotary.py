"""RotaryEmbedding vs HF's rotary modules and apply functions on tiny configs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    Qwen2VLTextConfig,
    Qwen3VLTextConfig,
)
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
from transformers.models.gpt_neox import modeling_gpt_neox as neox
from transformers.models.llama import modeling_llama as llama
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen2_vl
from transformers.models.qwen3_vl import modeling_qwen3_vl as qwen3_vl

from kernels.rotary import RotaryEmbedding

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 4, 2, 16


def qk(num_tokens: int, head_dim: int = HEAD_DIM, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(num_tokens)
    query = torch.randn(num_tokens, NUM_HEADS, head_dim, generator=gen).to(dtype)
    key = torch.randn(num_tokens, NUM_KV_HEADS, head_dim, generator=gen).to(dtype)
    return query, key


def hf_apply(apply_fn, hf_rope, query, key, position_ids, **kwargs):
    """HF layout: [batch=1, heads, T, D]; position_ids [1, T] or [3, 1, T]."""
    q, k = query.transpose(0, 1)[None], key.transpose(0, 1)[None]
    cos, sin = hf_rope(q, position_ids, **kwargs)
    q_out, k_out = apply_fn(q, k, cos, sin)
    return q_out[0].transpose(0, 1), k_out[0].transpose(0, 1)


def llama_config(rope_parameters: dict) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=NUM_HEADS * HEAD_DIM,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=128,
        rope_parameters=rope_parameters,
    )


ROPE_TYPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "longrope": {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": [1.0 + 0.1 * i for i in range(HEAD_DIM // 2)],
        "long_factor": [2.0 + 0.5 * i for i in range(HEAD_DIM // 2)],
        "original_max_position_embeddings": 32,
    },
}


@pytest.mark.parametrize("rope_type", list(ROPE_TYPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_llama_rotary(rope_type, dtype):
    config = llama_config(dict(ROPE_TYPES[rope_type]))
    hf_rope = llama.LlamaRotaryEmbedding(config)
    rope = RotaryEmbedding.from_config(config)
    assert rope.attention_scaling == pytest.approx(hf_rope.attention_scaling)
    torch.testing.assert_close(rope.inv_freq, hf_rope.inv_freq, rtol=0, atol=0)
    # positions below the pretraining length (longrope: short factors), shuffled like a batch
    positions = torch.tensor([0, 5, 1, 31, 2, 17, 30, 3])
    query, key = qk(len(positions), dtype=dtype)
    want = hf_apply(llama.apply_rotary_pos_emb, hf_rope, query, key, positions[None])
    got = rope(positions, query, key)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_longrope_switches_to_long_factors_past_the_original_length():
    config = llama_config(dict(ROPE_TYPES["longrope"]))
    positions = torch.tensor([32, 40, 90, 127])
    query, key = qk(len(positions))
    hf_rope = llama.LlamaRotaryEmbedding(config)
    want = hf_apply(llama.apply_rotary_pos_emb, hf_rope, query, key, positions[None])
    got = RotaryEmbedding.from_config(config)(positions, query, key)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_rotation_preserves_norms_and_relative_angles():
    rope = RotaryEmbedding.from_config(llama_config(dict(ROPE_TYPES["default"])))
    query, key = qk(2)
    q0, k0 = rope(torch.tensor([3, 7]), query, key)
    q1, k1 = rope(torch.tensor([13, 17]), query, key)
    torch.testing.assert_close(q0.norm(dim=-1), query.norm(dim=-1))
    # <q_m, k_n> depends only on m - n
    dot0 = (q0[0] * k0[1].repeat_interleave(2, dim=0)).sum(-1)
    dot1 = (q1[0] * k1[1].repeat_interleave(2, dim=0)).sum(-1)
    torch.testing.assert_close(dot0, dot1, rtol=1e-5, atol=1e-5)


def test_partial_rotary_matches_gpt_neox():
    config = GPTNeoXConfig(
        hidden_size=NUM_HEADS * 32,
        num_attention_heads=NUM_HEADS,
        rotary_pct=0.25,
        max_position_embeddings=64,
    )
    rope = RotaryEmbedding.from_config(config)
    assert rope.rotary_dim == 8
    positions = torch.tensor([0, 9, 3, 63])
    query, key = qk(len(positions), head_dim=32)
    hf_rope = neox.GPTNeoXRotaryEmbedding(config)
    want = hf_apply(neox.apply_rotary_pos_emb, hf_rope, query, key, positions[None])
    got = rope(positions, query, key)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(got[0][..., 8:], query[..., 8:])  # the tail is not rotated


def test_old_style_config_with_rope_scaling():
    config = SimpleNamespace(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=128,
        rope_theta=500000.0,
        rope_scaling={"type": "linear", "factor": 4.0},
        rotary_pct=0.5,
    )
    rope = RotaryEmbedding.from_config(config)
    dim = 8  # 16 * 0.5
    want = 1.0 / (500000.0 ** (torch.arange(0, dim, 2).float() / dim)) / 4.0
    torch.testing.assert_close(rope.inv_freq, want)
    assert config.rope_scaling == {"type": "linear", "factor": 4.0}  # not mutated


def test_per_layer_type_rope_matches_gemma3():
    config = Gemma3TextConfig(
        hidden_size=64,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
        },
    )
    hf_rope = Gemma3RotaryEmbedding(config)
    positions = torch.tensor([4, 0, 77])
    query, key = qk(len(positions))
    for layer_type in ("sliding_attention", "full_attention"):
        rope = RotaryEmbedding.from_config(config, layer_type=layer_type)
        want = hf_apply(
            llama.apply_rotary_pos_emb, hf_rope, query, key, positions[None], layer_type=layer_type
        )
        torch.testing.assert_close(rope(positions, query, key), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="layer_type"):
        RotaryEmbedding.from_config(config)


def mrope_positions(num_tokens: int) -> torch.Tensor:
    """[3, T]: text, then an image grid 2x3 at the same temporal index, then text again."""
    t = [0, 1, 2, 2, 2, 2, 2, 2, 5, 6][:num_tokens]
    h = [0, 1, 2, 2, 2, 3, 3, 3, 5, 6][:num_tokens]
    w = [0, 1, 2, 3, 4, 2, 3, 4, 5, 6][:num_tokens]
    return torch.tensor([t, h, w])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mrope_matches_qwen2_vl(dtype):
    config = Qwen2VLTextConfig(
        hidden_size=NUM_HEADS * HEAD_DIM,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
    )
    positions = mrope_positions(10)
    query, key = qk(10, dtype=dtype)
    hf_rope = qwen2_vl.Qwen2VLRotaryEmbedding(config)
    want = hf_apply(qwen2_vl.apply_rotary_pos_emb, hf_rope, query, key, positions[:, None, :])
    got = RotaryEmbedding.from_config(config)(positions, query, key)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_mrope_interleaved_matches_qwen3_vl():
    head_dim = 32
    config = Qwen3VLTextConfig(
        hidden_size=NUM_HEADS * head_dim,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=head_dim,
        rope_parameters={
            "rope_type": "default",
            "mrope_section": [8, 4, 4],  # t keeps the tail: 13, 14, 15
            "mrope_interleaved": True,
            "rope_theta": 5e5,
        },
    )
    positions = mrope_positions(10)
    query, key = qk(10, head_dim=head_dim)
    hf_rope = qwen3_vl.Qwen3VLTextRotaryEmbedding(config)
    want = hf_apply(qwen3_vl.apply_rotary_pos_emb, hf_rope, query, key, positions[:, None, :])
    got = RotaryEmbedding.from_config(config)(positions, query, key)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_mrope_with_text_positions_is_plain_rope():
    config = Qwen2VLTextConfig(
        hidden_size=NUM_HEADS * HEAD_DIM,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
    )
    rope = RotaryEmbedding.from_config(config)
    positions = torch.tensor([3, 1, 4, 1, 5])
    query, key = qk(5)
    got_1d = rope(positions, query, key)
    got_3d = rope(positions.expand(3, -1), query, key)
    torch.testing.assert_close(got_1d, got_3d, rtol=0, atol=0)


def test_built_on_meta_device_still_has_real_frequencies():
    config = llama_config(dict(ROPE_TYPES["llama3"]))
    with torch.device("meta"):
        rope = RotaryEmbedding.from_config(config)
    rope.to_empty(device="cpu")
    positions = torch.tensor([1, 2, 3])
    query, key = qk(3)
    hf_rope = llama.LlamaRotaryEmbedding(config)
    want = hf_apply(llama.apply_rotary_pos_emb, hf_rope, query, key, positions[None])
    torch.testing.assert_close(rope(positions, query, key), want, rtol=0, atol=0)


def test_mrope_section_must_cover_the_rotary_half():
    with pytest.raises(ValueError, match="mrope_section"):
        RotaryEmbedding(torch.ones(8), mrope_section=[2, 2, 2])


def test_layers_of_a_step_share_cos_sin(monkeypatch):
    """cos/sin are computed once per positions tensor (every layer of a step passes the same
    one) and again for a new tensor or dtype, with the same result as computing them afresh."""
    rope = RotaryEmbedding.from_config(llama_config(dict(ROPE_TYPES["default"])))
    calls = []
    original = rope.cos_sin
    monkeypatch.setattr(rope, "cos_sin", lambda *a: calls.append(a) or original(*a))
    positions = torch.tensor([0, 5, 1, 31])
    query, key = qk(len(positions))
    first = rope(positions, query, key)
    torch.testing.assert_close(rope(positions, query, key), first, rtol=0, atol=0)
    assert len(calls) == 1
    moved = torch.tensor([1, 6, 2, 32])
    got = rope(moved, query, key)
    assert len(calls) == 2
    fresh = RotaryEmbedding.from_config(llama_config(dict(ROPE_TYPES["default"])))
    torch.testing.assert_close(got, fresh(moved, query, key), rtol=0, atol=0)
    rope(moved, query.bfloat16(), key.bfloat16())
    assert len(calls) == 3
