"""State-space (Mamba, FalconMamba) and hybrid (Jamba, Zamba2) models on the engine's state
cache: greedy output equals HF generate, alone and batched with chunked prefill and forced
preemption; slots are freed and reused without leaking state between requests."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from gateway.tools.tiny_models import HYBRID_MODELS, SSM_MODELS, tiny_model_path
from lm_service import Engine, EngineConfig, SamplingParams
from tests.parity import assert_greedy_matches, hf_greedy

ARCHITECTURES = {
    "mamba": "MambaForCausalLM",
    "falcon_mamba": "FalconMambaForCausalLM",
    "jamba": "JambaForCausalLM",
    "zamba2": "Zamba2ForCausalLM",
}
PROMPTS = [
    [1, 17, 42, 99, 7],
    [1, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265],
    [1, 300],
    [1, *range(20, 50)],
]
MAX_TOKENS = 8
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)
# 12 blocks of 4 tokens cannot hold the four requests at once (preemption), and a budget of
# 8 tokens a step splits every prompt longer than that into chunks (chunked prefill).
TIGHT = {"block_size": 4, "num_blocks": 12, "max_num_batched_tokens": 8, "max_num_seqs": 4}


def _engine(name: str, **kwargs: object) -> Engine:
    return Engine(EngineConfig(model=str(tiny_model_path(name)), **{**TIGHT, **kwargs}))


@functools.cache
def _hf_reference(name: str) -> list[tuple[list[int], list[set[int]]]]:
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_path(name)).eval()
    return [hf_greedy(hf, prompt, MAX_TOKENS) for prompt in PROMPTS]


def _check(name: str, outputs: list, what: str) -> None:
    assert_greedy_matches(outputs, _hf_reference(name), f"{name} {what}")


CASES = [
    pytest.param(name, marks=pytest.mark.seed_row(ARCHITECTURES[name], "generate"))
    for name in SSM_MODELS + HYBRID_MODELS
]


@pytest.mark.parametrize("name", CASES)
def test_greedy_matches_hf_alone_and_batched_with_preemption(name: str) -> None:
    engine = _engine(name)
    assert engine.loaded.impl_name == "transformers"
    assert engine.loaded.model.state_cache_spec() is not None
    alone = [engine.generate([prompt], GREEDY)[0] for prompt in PROMPTS]
    _check(name, alone, "alone")
    assert engine.scheduler.num_preemptions == 0
    batched = engine.generate(PROMPTS, GREEDY)
    assert engine.scheduler.num_preemptions > 0, "the tight cache should have preempted"
    _check(name, batched, "batched")
    assert engine.scheduler.state_pool.num_free == engine.scheduler.state_pool.num_slots


def test_hybrid_layers_map_to_kv_and_state_caches() -> None:
    """Jamba numbers its attention layers 1 and 3 among Mamba layers 0 and 2; Zamba2 runs one
    shared attention block at two depths: each call gets its own KV cache."""
    jamba = _engine("jamba").loaded.model
    assert (jamba.kv_cache_spec().num_layers, jamba.state_cache_spec().num_layers) == (2, 2)
    zamba2 = _engine("zamba2").loaded.model
    assert (zamba2.kv_cache_spec().num_layers, zamba2.state_cache_spec().num_layers) == (2, 4)
    mamba = _engine("mamba").loaded.model
    assert mamba.kv_cache_spec().num_layers == 0
    assert mamba.state_cache_spec().conv_shape == (128, 3)  # inner = 2 x 64; conv kernel 4
    assert mamba.state_cache_spec().ssm_shape == (128, 8)


def test_prefix_caching_is_off_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lm_service.engine.engine"):
        engine = _engine("mamba", enable_prefix_caching=True)
    assert not engine.scheduler.block_pool.enable_prefix_caching
    assert any("prefix caching is off" in record.getMessage() for record in caplog.records)
    first = engine.generate([PROMPTS[3]], GREEDY)[0]
    again = engine.generate([PROMPTS[3]], GREEDY)[0]
    assert (first.num_cached_tokens, again.num_cached_tokens) == (0, 0)


def test_a_reused_slot_starts_from_a_clean_state() -> None:
    """One slot, three requests in turn: each must equal HF alone (no leaked state)."""
    engine = _engine("mamba", max_num_seqs=1)
    assert engine.scheduler.state_pool.num_slots == 1
    outputs = [engine.generate([prompt], GREEDY)[0] for prompt in PROMPTS]
    _check("mamba", outputs, "one slot")


def test_abort_and_preemption_free_the_slot() -> None:
    engine = _engine("mamba", max_num_seqs=2)
    pool = engine.scheduler.state_pool
    first = engine.add_request(None, PROMPTS[0], GREEDY)
    engine.add_request(None, PROMPTS[1], GREEDY)
    engine.step()
    assert pool.num_free == 0
    engine.abort(first)
    assert pool.num_free == 1
    victim = engine.scheduler.running[-1]
    engine.scheduler._preempt(engine.scheduler.running.pop())
    assert (pool.num_free, victim.state_slot) == (2, None)
    while engine.has_unfinished():
        engine.step()
    assert pool.num_free == 2


def test_state_slots_come_out_of_the_memory_budget() -> None:
    spec = _engine("mamba").loaded.model.state_cache_spec()
    # 2 layers x (conv 128 x 3 fp32 + ssm 128 x 8 fp32)
    assert spec.bytes_per_slot == 2 * (128 * 3 * 4 + 128 * 8 * 4)
    engine = _engine("mamba", num_blocks=None, kv_cache_memory=3 * spec.bytes_per_slot)
    assert engine.scheduler.state_pool.num_slots == 3  # not max_num_seqs=4
    assert torch.equal(engine.runner.state_caches[1][0], torch.zeros(3, 128, 8))
