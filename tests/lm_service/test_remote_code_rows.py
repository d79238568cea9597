"""Remote-code-only rows of the seed as local checkpoints with `auto_map` and their own
modeling code (tests/lm_service/remote_code/, written for these tests in each family's layout),
greedy output equal to HF loading the same remote code: InternLM2 and ChatGLM run with
trust_remote_code=True on the Transformers fallback; InternLM and Aquila (the Llama layout)
on our native Llama family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from gateway.tools.tiny_models.text import text_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed
from lm_service import Engine, EngineConfig, SamplingParams
from protos.errors import InvalidRequest
from tests.parity import assert_greedy_matches, hf_greedy

REMOTE_CODE = Path(__file__).parent / "remote_code"
# folder -> (config.json architecture, auto_map, implementation model_impl="auto" picks);
# ChatGLM's hub configs name ChatGLMModel
ROWS = {
    "internlm2": (
        "InternLM2ForCausalLM",
        {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "transformers",
    ),
    "chatglm": (
        "ChatGLMModel",
        {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "transformers",
    ),
    "internlm": (
        "InternLMForCausalLM",
        {
            "AutoConfig": "configuration_internlm.InternLMConfig",
            "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM",
        },
        "native",
    ),
    "aquila": (
        "AquilaForCausalLM",
        {
            "AutoConfig": "configuration_aquila.AquilaConfig",
            "AutoModelForCausalLM": "modeling_aquila.AquilaForCausalLM",
        },
        "native",
    ),
}
PROMPTS = [[1, 17, 42, 99, 7], [1, *range(250, 267)], [1, 300], [1, *range(20, 50)]]
MAX_TOKENS = 10
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)


def build_remote_checkpoint(name: str, out: Path) -> Path:
    """Config with auto_map + the family's modeling files + seeded weights + tokenizer."""
    architecture, auto_map, _ = ROWS[name]
    out.mkdir(parents=True)
    for source in (REMOTE_CODE / name).glob("*.py"):
        shutil.copy(source, out / source.name)
    tokenizer = text_tokenizer(name)
    config = {
        "architectures": [architecture],
        "model_type": name,
        "auto_map": auto_map,
        "vocab_size": len(tokenizer),
        "padded_vocab_size": len(tokenizer),
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
    }
    (out / "config.json").write_text(json.dumps(config))
    hf_config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=True).eval()
    finish_lm(model, tokenizer, seed=model_seed(name))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    saved["architectures"] = [architecture]  # save_pretrained writes the class name instead
    (out / "config.json").write_text(json.dumps(saved))
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("remote_code")
    return {name: build_remote_checkpoint(name, root / name) for name in ROWS}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name, marks=pytest.mark.seed_row(ROWS[name][0], "generate", impl=ROWS[name][2])
        )
        for name in ROWS
    ],
)
def test_remote_code_greedy_matches_hf(name: str, checkpoints: dict[str, Path]) -> None:
    path = checkpoints[name]
    engine = Engine(
        EngineConfig(
            model=str(path),
            trust_remote_code=True,
            block_size=4,
            num_blocks=12,
            max_num_batched_tokens=8,
        )
    )
    assert engine.loaded.architecture == ROWS[name][0]
    assert engine.loaded.impl_name == ROWS[name][2]
    if engine.loaded.impl_name == "transformers":
        hf_class = ROWS[name][1]["AutoModelForCausalLM"].rsplit(".", 1)[1]
        assert type(engine.loaded.model.hf_model).__name__ == hf_class
    hf = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    references = [hf_greedy(hf, prompt, MAX_TOKENS) for prompt in PROMPTS]
    alone = [engine.generate([prompt], GREEDY)[0] for prompt in PROMPTS]
    assert_greedy_matches(alone, references, f"{name} alone")
    batched = engine.generate(PROMPTS, GREEDY)
    assert engine.scheduler.num_preemptions > 0
    assert_greedy_matches(batched, references, f"{name} batched")


def test_remote_code_needs_trust(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(InvalidRequest, match="trust_remote_code=True"):
        Engine(EngineConfig(model=str(checkpoints["chatglm"])))
