"""Mllama (T + I+) in one process: its tiled vision tower in the image encoder service, the
states routed to the request's cross-attention (<|image|> stays one prompt token), the
language model on the engine; greedy == HF `generate` on the same prompt ids, alone and
batched with preemption forced, a text-only prompt among them; too many images are refused.

NOTE: HF's processor writes a second BOS before a prompt that has one; our prompt builder
never doubles BOS (see gateway.prompt.builder), so HF runs on the gateway's own prompt ids,
with the processor's pixels and HF's own cross-attention mask for those ids."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, MllamaForConditionalGeneration
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from gateway import LLM
from gateway.tools.tiny_models import tiny_model_path
from protos.errors import InvalidRequest
from protos.sampling_params import SamplingParams

MAX_TOKENS = 8
_RNG = np.random.default_rng(1)
WIDE = Image.fromarray(_RNG.integers(0, 255, (16, 32, 3), dtype=np.uint8))  # 2 tiles
SQUARE = Image.fromarray(_RNG.integers(0, 255, (20, 20, 3), dtype=np.uint8))  # 1 of 2 tiles
PROMPTS = (
    ("a cat <|image|> what is this <|image|> and that", [WIDE, SQUARE]),
    ("<|image|> describe it", [SQUARE]),
    ("no picture at all", []),
)


@pytest.fixture(scope="module")
def llm() -> Iterator[LLM]:
    # 6 KV blocks of 4 tokens cannot hold six sequences of up to 23 tokens: preemption
    llm = LLM(
        str(tiny_model_path("mllama")), block_size=4, num_blocks=6, limit_mm_per_prompt={"image": 2}
    )
    yield llm
    llm.close()


def _request(text: str, images: list) -> Any:
    return {"prompt": text, "multi_modal_data": {"image": images}} if images else text


def _hf_generate(hf: Any, processor: Any, ids: list[int], images: list) -> list[int]:
    inputs: dict[str, Any] = {"input_ids": torch.tensor([ids])}
    if images:
        pixels = processor.image_processor([images], return_tensors="pt")
        inputs.update(
            {k: pixels[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
        )
        token_mask = [get_cross_attention_token_mask(ids, hf.config.image_token_index)]
        mask = convert_sparse_cross_attention_mask_to_dense(
            token_mask, pixels["num_tiles"], processor.image_processor.max_image_tiles, len(ids)
        )
        inputs["cross_attention_mask"] = torch.from_numpy(mask)
    with torch.inference_mode():
        out = hf.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.mark.seed_row("MllamaForConditionalGeneration", "generate")
def test_alone_and_batched_equal_hf_generate(llm: LLM) -> None:
    path = str(tiny_model_path("mllama"))
    processor = AutoProcessor.from_pretrained(path)
    hf = MllamaForConditionalGeneration.from_pretrained(path).eval()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    expected = []
    for text, images in PROMPTS:
        (alone,) = llm.generate(_request(text, images), params)
        ids = list(alone.prompt_token_ids)
        assert ids.count(hf.config.image_token_index) == len(images)  # one token per image
        expected.append(_hf_generate(hf, processor, ids, images))
        assert list(alone.outputs[0].token_ids) == expected[-1], text
    batched = llm.generate([_request(t, i) for t, i in PROMPTS] * 2, params)
    assert [list(o.outputs[0].token_ids) for o in batched] == expected * 2
    assert llm._lm.loop.engine.scheduler.num_preemptions > 0


def test_more_images_than_the_limit_are_refused(llm: LLM) -> None:
    with pytest.raises(InvalidRequest, match="At most 2 image"):
        llm.generate(_request("<|image|><|image|><|image|> three", [SQUARE] * 3))
