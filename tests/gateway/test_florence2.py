"""Florence-2 (T + I) end to end in one process: its DaViT tower in the image encoder (generic,
processor-driven), the prompt laid out by its processor (task tokens, image tokens, <s>, </s>),
its BART encoder run by the LM service over image + text, its decoder on the engine; greedy
== HF `generate`, alone and batched with preemption forced; a bad prompt is refused."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Florence2ForConditionalGeneration

from gateway import LLM
from gateway.tools.tiny_models import tiny_model_path
from protos.errors import InvalidRequest
from protos.sampling_params import SamplingParams

TASKS = ("<CAPTION>", "<OD>", "<CAPTION_TO_PHRASE_GROUNDING>A cat on a mat")
MAX_TOKENS = 10


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def florence2() -> str:
    return str(tiny_model_path("florence2"))


@pytest.fixture(scope="module")
def expected(florence2: str) -> list[list[int]]:
    processor = AutoProcessor.from_pretrained(florence2)
    model = Florence2ForConditionalGeneration.from_pretrained(florence2).eval()
    out = []
    for seed, task in enumerate(TASKS):
        inputs = processor(text=task, images=_image(seed), return_tensors="pt")
        with torch.inference_mode():
            tokens = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        out.append(tokens[0, 1:].tolist())  # without the decoder start </s>
    return out


@pytest.fixture(scope="module")
def llm(florence2: str) -> Iterator[LLM]:
    # 6 KV blocks of 4 tokens cannot hold three 11-token sequences: preemption when batched
    llm = LLM(florence2, block_size=4, num_blocks=6)
    yield llm
    llm.close()


def _prompt(seed: int, task: str) -> dict:
    return {"prompt": task, "multi_modal_data": {"image": _image(seed)}}


@pytest.mark.seed_row("Florence2ForConditionalGeneration", "generate")
def test_alone_and_batched_equal_hf_generate(llm: LLM, expected: list[list[int]]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    for seed, task in enumerate(TASKS):
        (alone,) = llm.generate(_prompt(seed, task), params)
        assert list(alone.outputs[0].token_ids) == expected[seed], task
    batched = llm.generate([_prompt(seed, task) for seed, task in enumerate(TASKS)] * 2, params)
    assert [list(o.outputs[0].token_ids) for o in batched] == expected * 2
    assert llm._lm.loop.engine.scheduler.num_preemptions > 0
    assert batched[3].media_cache_hits == (True,)  # the same image again: the encoder's cache


def test_a_prompt_the_processor_refuses_names_the_rule(llm: LLM) -> None:
    with pytest.raises(InvalidRequest, match="should be the only content"):
        llm.generate(_prompt(0, "<CAPTION> and more"))
