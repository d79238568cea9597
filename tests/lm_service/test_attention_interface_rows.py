"""Models whose HF class leaves `_supports_attention_backend` False run on the fallback when
their code routes attention through `ALL_ATTENTION_FUNCTIONS`; the flag alone decides nothing.

StableLM is attention-only; Jamba and Zamba2 (hybrids with the same flag) are proven in
test_state_models.py. XGLM computes attention in its own code and we have no shim for it
(Bloom, MPT and Falcon have ours: test_attention_variant_rows.py): refused with a sentence.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from transformers import AutoModelForCausalLM, BloomForCausalLM, XGLMConfig, XGLMForCausalLM

from gateway.tools.tiny_models import tiny_model_path
from lm_service import Engine, EngineConfig, SamplingParams
from lm_service.models.registry import load_model
from lm_service.models.transformers_backend import _routes_attention_through_interface
from protos.errors import Unsupported
from tests.parity import assert_greedy_matches, hf_greedy

FLAG_FALSE_BUT_ROUTED = ("StableLmForCausalLM", "JambaForCausalLM", "Zamba2ForCausalLM")
PROMPTS = [[1, 17, 42, 99, 7], [1, *range(250, 267)], [1, 300], [1, *range(20, 50)]]
MAX_TOKENS = 12


@pytest.mark.parametrize("architecture", FLAG_FALSE_BUT_ROUTED)
def test_the_flag_is_false_but_the_code_calls_the_interface(architecture: str) -> None:
    model_class = getattr(transformers, architecture)
    assert not getattr(model_class, "_supports_attention_backend", False)
    assert _routes_attention_through_interface(model_class)


def test_own_attention_code_is_not_mistaken_for_the_interface() -> None:
    assert not _routes_attention_through_interface(BloomForCausalLM)


@pytest.mark.seed_row("StableLmForCausalLM", "generate")
def test_stablelm_greedy_matches_hf() -> None:
    path = tiny_model_path("stablelm")
    engine = Engine(
        EngineConfig(model=str(path), block_size=4, num_blocks=12, max_num_batched_tokens=8)
    )
    assert engine.loaded.impl_name == "transformers"
    assert engine.loaded.model.kv_cache_spec().num_layers == 2
    outputs = engine.generate(
        PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)
    )
    assert engine.scheduler.num_preemptions > 0
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    references = [hf_greedy(hf, prompt, MAX_TOKENS) for prompt in PROMPTS]
    assert_greedy_matches(outputs, references, "stablelm")


def test_own_attention_code_without_a_shim_is_refused_naming_why(tmp_path: Path) -> None:
    assert not _routes_attention_through_interface(XGLMForCausalLM)
    XGLMForCausalLM(
        XGLMConfig(vocab_size=64, d_model=32, num_layers=1, attention_heads=4, ffn_dim=64)
    ).save_pretrained(tmp_path)
    with pytest.raises(Unsupported, match="computes attention in its own code"):
        load_model(str(tmp_path), model_impl="transformers")
