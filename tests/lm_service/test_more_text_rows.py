"""Further text-generate rows of the seed on the Transformers fallback: greedy output equals
HF generate for four prompts batched under a cache too small for them (preemption) and a step
budget that chunks every long prompt."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from gateway.tools.tiny_models import MORE_TEXT_ARCHITECTURES, tiny_model_path
from lm_service import Engine, EngineConfig, SamplingParams
from tests.parity import assert_greedy_matches, hf_greedy

PROMPTS = [[1, 17, 42, 99, 7], [1, *range(250, 267)], [1, 300], [1, *range(20, 50)]]
MAX_TOKENS = 8
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)

CASES = [
    pytest.param(name, marks=pytest.mark.seed_row(architecture, "generate"))
    for name, architecture in MORE_TEXT_ARCHITECTURES.items()
]


@pytest.mark.parametrize("name", CASES)
def test_greedy_matches_hf_batched_with_preemption(name: str) -> None:
    path = tiny_model_path(name)
    engine = Engine(
        EngineConfig(model=str(path), block_size=4, num_blocks=12, max_num_batched_tokens=8)
    )
    assert engine.loaded.impl_name == "transformers"
    outputs = engine.generate(PROMPTS, GREEDY)
    assert engine.scheduler.num_preemptions > 0
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    references = [hf_greedy(hf, prompt, MAX_TOKENS) for prompt in PROMPTS]
    assert_greedy_matches(outputs, references, name)
