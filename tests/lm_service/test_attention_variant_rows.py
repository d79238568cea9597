"""Bloom, MPT and Falcon (ALiBi and rotary layouts, through shims of their own attention code)
and the MLA rows (DeepSeek-V2/V3, MiniCPM3, on a cache of their compressed latent) on the
Transformers fallback: greedy output equals HF generate for four prompts of different lengths
alone, and batched under a cache too small for them (preemption) with a step budget that
chunks every long prompt."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from gateway.tools.tiny_models import (
    ATTENTION_VARIANT_ARCHITECTURES,
    MLA_DIMS,
    MLA_MODELS,
    tiny_model_path,
)
from lm_service import Engine, EngineConfig, SamplingParams
from lm_service.models.attention_shims import PLACEHOLDER_MASK_NAME
from lm_service.models.hf_attention import ATTENTION_NAME
from lm_service.models.registry import load_model
from tests.parity import assert_greedy_matches, hf_greedy

PROMPTS = [[1, 17, 42, 99, 7], [1, *range(250, 267)], [1, 300], [1, *range(20, 50)]]
MAX_TOKENS = 8
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)

CASES = [
    pytest.param(name, marks=pytest.mark.seed_row(architecture, "generate"))
    for name, architecture in ATTENTION_VARIANT_ARCHITECTURES.items()
]


@pytest.mark.parametrize("name", CASES)
def test_greedy_matches_hf_alone_and_batched_with_preemption(name: str) -> None:
    path = tiny_model_path(name)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    references = [hf_greedy(hf, prompt, MAX_TOKENS) for prompt in PROMPTS]
    # 12 blocks of 4 hold any one request (at most 38 tokens), not all four at once
    engine = Engine(
        EngineConfig(model=str(path), block_size=4, num_blocks=12, max_num_batched_tokens=8)
    )
    assert engine.loaded.impl_name == "transformers"
    alone = [engine.generate([prompt], GREEDY)[0] for prompt in PROMPTS]
    assert engine.scheduler.num_preemptions == 0
    assert_greedy_matches(alone, references, f"{name} alone")
    batched = engine.generate(PROMPTS, GREEDY)
    assert engine.scheduler.num_preemptions > 0
    assert_greedy_matches(batched, references, f"{name} batched")


@pytest.mark.parametrize("name", MLA_MODELS)
def test_mla_caches_only_the_latent(name: str) -> None:
    """One 40-lane latent per token and layer, V read from its first 32 lanes: not the naive
    4 heads x (24 Q/K + 24 V) lanes."""
    engine = Engine(EngineConfig(model=str(tiny_model_path(name)), block_size=4, num_blocks=8))
    spec = engine.loaded.model.kv_cache_spec()
    latent = MLA_DIMS["kv_lora_rank"] + MLA_DIMS["qk_rope_head_dim"]
    assert (spec.num_kv_heads, spec.head_dim) == (1, latent)
    assert (spec.v_head_dim, spec.values_in_keys) == (MLA_DIMS["kv_lora_rank"], True)
    for k_cache, v_cache in engine.runner.kv_caches:
        assert v_cache.data_ptr() == k_cache.data_ptr()  # no V tensor of its own
        assert k_cache.shape == (8, 4, 1, latent)


@pytest.mark.parametrize(
    ("name", "num_kv_heads"),
    [("falcon", 1), ("falcon_40b", 2), ("falcon_rw", 4), ("bloom", 4), ("mpt", 4)],
)
def test_shims_cache_the_kv_heads_unbroadcast(name: str, num_kv_heads: int) -> None:
    """Falcon's multi-query and grouped layouts keep 1 and 2 KV heads in the cache (HF's own
    split would broadcast the grouped ones to all 4 query heads)."""
    model = load_model(str(tiny_model_path(name))).model
    spec = model.kv_cache_spec()
    assert (spec.num_kv_heads, spec.head_dim, spec.v_head_dim) == (num_kv_heads, 16, None)
    # built eager, then switched to a mask function that builds no [T, T] mask
    assert model.hf_model.config._attn_implementation in (ATTENTION_NAME, PLACEHOLDER_MASK_NAME)
