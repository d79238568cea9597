"""Native BART on the engine (its encoder run by the LM service on the prompt, its decoder paged
with cross-attention) equals HF `generate`: alone, batched with preemption, token by token,
and through the offline `LLM`; a checkpoint missing a weight is refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, BartForConditionalGeneration

from gateway import LLM
from gateway.tools.tiny_models import tiny_model_path
from lm_service.config import EngineConfig
from lm_service.engine.engine import Engine
from lm_service.models.bart import BartForConditionalGeneration as NativeBart
from lm_service.models.loader import iterate_weights
from protos.errors import InvalidRequest, Overloaded
from protos.sampling_params import SamplingParams
from tests.parity import TOP_N, assert_greedy_matches

TEXTS = (
    "The weather is nice and sunny this morning.",
    "Hello there, how are you?",
    "A cat sat on the mat and looked at the bird",
    "Transcribe the audio.",
)
MAX_TOKENS = (12, 7, 15, 9)


@pytest.fixture(scope="module")
def bart() -> dict[str, Any]:
    path = str(tiny_model_path("bart"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = BartForConditionalGeneration.from_pretrained(path).eval()
    cases = []
    for text, max_tokens in zip(TEXTS, MAX_TOKENS, strict=True):
        ids = tokenizer(text).input_ids
        with torch.inference_mode():
            out = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=max_tokens + 1,  # HF counts the forced <s> as generated
                do_sample=False,
                num_beams=1,
                output_logits=True,
                return_dict_in_generate=True,
            )
        assert out.sequences[0, :2].tolist() == [2, 1]  # </s> starts, <s> is forced
        tops = [set(step[0].topk(TOP_N).indices.tolist()) for step in out.logits[1:]]
        cases.append((ids, max_tokens, (out.sequences[0, 2:].tolist(), tops)))
    return {"path": path, "cases": cases}


def _generate(engine: Engine, cases: list) -> list[Any]:
    params = [SamplingParams(temperature=0.0, max_tokens=m, logprobs=TOP_N) for _, m, _ in cases]
    return engine.generate([ids for ids, _, _ in cases], params)


@pytest.mark.seed_row("BartForConditionalGeneration", "generate")
def test_alone_and_batched_equal_hf_generate(bart: dict) -> None:
    engine = Engine(EngineConfig(model=bart["path"], block_size=4))
    assert engine.loaded.impl_name == "native"
    for index, case in enumerate(bart["cases"]):
        assert_greedy_matches(_generate(engine, [case]), [case[2]], f"bart alone {index}")
    # 5 KV blocks of 4 tokens cannot hold eight sequences of up to 17: preemption; a budget
    # of one token runs the 2-token decoder prompt in two chunks
    cases = bart["cases"] * 2
    for overrides in ({"num_blocks": 5}, {"max_num_batched_tokens": 1}):
        engine = Engine(EngineConfig(model=bart["path"], block_size=4, **overrides))
        assert_greedy_matches(_generate(engine, cases), [c[2] for c in cases], f"{overrides}")
        if "num_blocks" in overrides:
            assert engine.scheduler.num_preemptions > 0


def test_offline_llm_generate_equals_hf(bart: dict) -> None:
    llm = LLM(bart["path"], block_size=4)
    try:
        outputs = llm.generate(
            list(TEXTS), [SamplingParams(temperature=0.0, max_tokens=m) for m in MAX_TOKENS]
        )
    finally:
        llm.close()
    for output, (_, _, (tokens, _)) in zip(outputs, bart["cases"], strict=True):
        assert list(output.outputs[0].token_ids) == tokens


def test_a_missing_weight_or_an_overlong_prompt_is_refused(bart: dict) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(bart["path"])
    model = NativeBart(config)
    weights = [(n, t) for n, t in iterate_weights(tiny_model_path("bart")) if "fc2.bias" not in n]
    with pytest.raises(InvalidRequest, match="lacks weights for: model.decoder.layers.0.fc2"):
        model.load_weights(weights)
    engine = Engine(EngineConfig(model=bart["path"], block_size=4, num_blocks=8))
    with pytest.raises(InvalidRequest, match="longer than BartForConditionalGeneration's encoder"):
        engine.add_request(None, [5] * 129)


def test_a_full_queue_refuses_before_the_encoder_runs(bart: dict) -> None:
    config = EngineConfig(model=bart["path"], block_size=4, num_blocks=64, max_queued_requests=1)
    engine = Engine(config)
    ids = bart["cases"][0][0]
    engine.add_request("queued", ids, SamplingParams(temperature=0.0, max_tokens=2))
    calls = []
    model = engine.loaded.model
    encode = model.encode_prompt
    model.encode_prompt = lambda *args: calls.append(args) or encode(*args)  # counts passes
    with pytest.raises(Overloaded, match="queue is full"):
        engine.add_request("refused", ids, SamplingParams(temperature=0.0, max_tokens=2))
    assert calls == []  # the refusal paid for no encoder pass
    engine.abort("queued")
    engine.add_request("next", ids, SamplingParams(temperature=0.0, max_tokens=2))
    assert len(calls) == 1  # an admitted request is encoded


def test_final_logits_bias_is_read_from_the_checkpoint(bart: dict, tmp_path: Path) -> None:
    """The tiny builder's bias is zeros (as HF initializes it): a copy with a random one."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    shutil.copytree(bart["path"], tmp_path / "bart")
    weights = load_file(tmp_path / "bart" / "model.safetensors")
    bias = torch.randn_like(weights["final_logits_bias"])  # [1, vocab]
    save_file({**weights, "final_logits_bias": bias}, tmp_path / "bart" / "model.safetensors")
    config = AutoConfig.from_pretrained(tmp_path / "bart")
    model = NativeBart.from_checkpoint(tmp_path / "bart", config, dtype=torch.float32, device="cpu")
    assert torch.equal(model.final_logits_bias, bias)
