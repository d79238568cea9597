"""Greedy output of our engine vs HF generate, for every tiny text model."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from gateway.tools.tiny_models import LLAMA_FAMILY, TEXT_MODELS, tiny_model_path
from lm_service import Engine, EngineConfig, SamplingParams
from tests.parity import check_logprobs_close, hf_greedy, our_tops

PROMPTS = [
    [1, 17, 42, 99, 7],
    [1, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266],
    [1, 300],
    [1] + list(range(20, 60)),
]
MAX_TOKENS = 24

CASES = [(name, "transformers") for name in TEXT_MODELS] + [(n, "native") for n in LLAMA_FAMILY]
# tiny model -> the seed row it proves
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mistral_swa": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "opt": "OPTForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
PARAMS = [
    pytest.param(
        name,
        impl,
        id=f"{name}-{impl}",
        marks=pytest.mark.seed_row(ARCHITECTURES[name], "generate", impl=impl),
    )
    for name, impl in CASES
]


@pytest.mark.parametrize(("name", "impl"), PARAMS)
def test_greedy_matches_hf(name: str, impl: str) -> None:
    path = tiny_model_path(name)
    engine = Engine(
        EngineConfig(model=str(path), model_impl=impl, block_size=4, num_blocks=128, max_num_seqs=4)
    )
    assert engine.loaded.impl_name == impl
    outs = engine.generate(
        PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)
    )
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    matched = 0
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ref, ref_top = hf_greedy(hf, prompt, MAX_TOKENS)
        matched += check_logprobs_close(
            list(out.token_ids), our_tops(out.logprobs), ref, ref_top, name
        )
    # random tiny models are not tie-free, but nearly all tokens must agree exactly
    assert matched >= 0.75 * MAX_TOKENS * len(PROMPTS), f"{name}: only {matched} tokens matched"
