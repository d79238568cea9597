"""The native Whisper decoder on the engine equals HF `generate`: alone, batched with requests at
other steps and prompts, with preemption forced, and with the decoder prompt chunked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration

from gateway.tools.tiny_models import tiny_model_path
from lm_service.config import EngineConfig
from lm_service.engine.engine import Engine
from protos.errors import InvalidRequest
from protos.sampling_params import SamplingParams
from tests.parity import TOP_N, assert_greedy_matches

# (seconds of audio, language, task, max_tokens): different clips, prompts and lengths
CASES = [(1.0, "en", "transcribe", 10), (0.5, "de", "translate", 6), (2.0, "fr", "transcribe", 14)]


@pytest.fixture(scope="module")
def whisper() -> dict[str, Any]:
    path = str(tiny_model_path("whisper"))
    processor = AutoProcessor.from_pretrained(path)
    hf = WhisperForConditionalGeneration.from_pretrained(path).eval()
    rng = np.random.default_rng(0)
    cases = []
    for seconds, language, task, max_tokens in CASES:
        clip = 0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
        features = processor.feature_extractor(
            clip, sampling_rate=16000, return_tensors="pt"
        ).input_features  # [1, mels, frames]
        with torch.inference_mode():
            out = hf.generate(
                features,
                language=language,
                task=task,
                max_new_tokens=max_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            states = hf.model.encoder(features).last_hidden_state[0]  # [100, d_model]
        prompt = out.sequences[0, :4].tolist()  # <|sot|> <|lang|> <|task|> <|notimestamps|>
        tokens = out.sequences[0, 4:].tolist()
        tops = [set(step[0].topk(TOP_N).indices.tolist()) for step in out.logits]
        cases.append((prompt, states, max_tokens, (tokens, tops)))
    return {"path": path, "cases": cases, "tokenizer": processor.tokenizer}


def _engine(path: str, **overrides: Any) -> Engine:
    return Engine(EngineConfig(model=path, max_num_seqs=8, block_size=4, **overrides))


def _params(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=TOP_N)


def _run_staggered(engine: Engine, cases: list) -> list[Any]:
    """Each case joins two steps after the previous one, so decodes and first steps (cross
    K/V written) share steps; returns the engine's requests, in case order."""
    requests = []
    for prompt, states, max_tokens, _ in cases:
        rid = engine.add_request(None, prompt, _params(max_tokens), encoder_states=states)
        requests.append(engine._requests[rid])
        engine.step()
        engine.step()
    while engine.has_unfinished():
        engine.step()
    return requests


def _outputs(engine: Engine, cases: list, **kw: Any) -> list[Any]:
    prompts = [c[0] for c in cases]
    params = [_params(c[2]) for c in cases]
    return engine.generate(prompts, params, encoder_states=[c[1] for c in cases], **kw)


def test_alone_equals_hf_generate(whisper: dict) -> None:
    engine = _engine(whisper["path"])
    assert engine.loaded.impl_name == "native" and engine.max_model_len == 128
    for index, case in enumerate(whisper["cases"]):
        (out,) = _outputs(engine, [case])
        assert_greedy_matches([out], [case[3]], f"whisper alone {index}")
    assert engine.scheduler.encoder_pool.num_free == engine.scheduler.encoder_pool.num_blocks


@pytest.mark.parametrize(
    "overrides",
    [
        # 12 KV blocks of 4 tokens cannot hold six 18-token sequences: preemption must happen
        pytest.param({"num_blocks": 12}, id="preempted"),
        # a 3-token budget splits every 4-token decoder prompt into two chunks
        pytest.param({"max_num_batched_tokens": 3}, id="chunked"),
    ],
)
def test_batched_equals_hf(whisper: dict, overrides: dict) -> None:
    cases = whisper["cases"] * 2  # 6 requests, 3 kinds
    engine = _engine(whisper["path"], **overrides)
    outputs = _outputs(engine, cases)
    if "num_blocks" in overrides:
        assert engine.scheduler.num_preemptions > 0
    assert_greedy_matches(outputs, [c[3] for c in cases], "whisper batched")


def test_staggered_arrivals_equal_hf(whisper: dict) -> None:
    engine = _engine(whisper["path"])
    cases = whisper["cases"] * 2
    for index, request in enumerate(_run_staggered(engine, cases)):
        tokens, _ = cases[index][3]
        assert request.output_token_ids == tokens, f"staggered request {index}"


def test_bad_encoder_states_are_refused(whisper: dict) -> None:
    engine = _engine(whisper["path"], num_blocks=8)
    prompt = whisper["cases"][0][0]
    with pytest.raises(InvalidRequest, match="needs encoder states"):
        engine.add_request(None, prompt)
    with pytest.raises(InvalidRequest, match=r"shape \[n, 64\]"):
        engine.add_request(None, prompt, encoder_states=torch.zeros(10, 32))
    with pytest.raises(InvalidRequest, match="more than"):
        engine.add_request(None, prompt, encoder_states=torch.zeros(101, 64))


def test_suppressed_tokens_are_never_emitted(whisper: dict) -> None:
    """HF's SuppressTokensLogitsProcessor (generation config `suppress_tokens`, set on real
    checkpoints): the engine never picks them, even where they would win."""
    engine = _engine(whisper["path"])
    prompt, states, _, (tokens, _) = whisper["cases"][0]
    engine.loaded.model.suppress_tokens = sorted(set(tokens))
    (out,) = engine.generate([prompt], [_params(6)], encoder_states=[states])
    assert out.token_ids and not set(out.token_ids) & set(tokens)
