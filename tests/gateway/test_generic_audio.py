"""An audio architecture on the generic, processor-driven path with no mesh code: Audio
Flamingo 3 (beyond the seed's tables; its spec `T + A+` is derived from its config). Offline
`LLM.generate` and `LLM.chat` greedy equal HF `generate` on a clip the test makes, and our
prompt ids equal the HF processor's.

NOTE: the seed's own audio rows are Qwen2-Audio (native tower), Phi-4-multimodal (HF's
processor needs torchvision here) and Ultravox / MiniCPM-O (not in transformers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway import LLM, SamplingParams
from gateway.tools.tiny_models import tiny_model_path
from protos.hf_processor import load_processor
from tests import mm_reference as ref
from tests.parity import TOP_N, check_logprobs_close, our_tops

MAX_TOKENS = 12
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=TOP_N, ignore_eos=True)
PROMPT = "<sound>What is it?"


@pytest.fixture(scope="module")
def llm() -> Iterator[LLM]:
    served = LLM(model=str(tiny_model_path("audioflamingo3")))
    yield served
    served.close()


def _check(out: Any, inputs: dict[str, Any], name: str) -> None:
    model = ref.hf_model(tiny_model_path("audioflamingo3"))
    tokens, tops = ref.generate(model, inputs, MAX_TOKENS)
    completion = out.outputs[0]
    assert list(out.prompt_token_ids) == inputs["input_ids"][0].tolist()
    ours = list(completion.token_ids)
    matched = check_logprobs_close(ours, our_tops(completion.logprobs), tokens, tops, name)
    assert matched >= MAX_TOKENS // 2, f"{name}: only {matched} tokens matched HF"


def test_generate_matches_hf(llm: LLM) -> None:
    clip = ref.tone(2.5, hertz=220.0)  # longer than the 2 s window: two windows, one item
    data = {"audio": (clip, ref.SAMPLING_RATE)}
    out = llm.generate({"prompt": PROMPT, "multi_modal_data": data}, GREEDY)[0]
    processor = load_processor(tiny_model_path("audioflamingo3"))
    inputs = dict(processor(text=[PROMPT], audio=[clip], return_tensors="pt"))
    _check(out, inputs, "audioflamingo3-generate")


def test_chat_matches_hf(llm: LLM) -> None:
    clip = ref.tone(1.3)
    part = {"type": "audio", "audio": (clip, ref.SAMPLING_RATE)}
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}]
    out = llm.chat(messages, GREEDY)[0]
    processor = load_processor(tiny_model_path("audioflamingo3"))
    hf_messages = [{"role": "user", "content": [{"type": "audio"}, messages[0]["content"][1]]}]
    text = processor.apply_chat_template(hf_messages, add_generation_prompt=True)
    inputs = dict(processor(text=[text], audio=[clip], return_tensors="pt"))
    _check(out, inputs, "audioflamingo3-chat")
