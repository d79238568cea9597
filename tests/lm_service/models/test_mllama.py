"""Native Mllama on the engine (Llama self-attention paged, gated cross-attention over the
images' vision states, masked per token as HF's processor masks them) equals HF `generate`:
alone, batched with preemption and chunked prefill, with a text-only prompt among images; the
windows equal HF's cross_attention_mask; a checkpoint missing a gate is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, MllamaForConditionalGeneration

from gateway.tools.tiny_models import tiny_model_path
from lm_service.config import EngineConfig
from lm_service.engine.engine import Engine
from lm_service.models.loader import iterate_weights
from lm_service.models.mllama import MllamaForConditionalGeneration as NativeMllama
from lm_service.models.mllama import mllama_num_patches
from protos.cross_windows import image_cross_windows
from protos.errors import InvalidRequest
from protos.sampling_params import SamplingParams
from tests.parity import TOP_N, assert_greedy_matches

_RNG = np.random.default_rng(0)
WIDE = Image.fromarray(_RNG.integers(0, 255, (16, 32, 3), dtype=np.uint8))  # 2 tiles
SQUARE = Image.fromarray(_RNG.integers(0, 255, (20, 20, 3), dtype=np.uint8))  # 1 of 2 tiles
PROMPTS = (  # (text, images, max_tokens)
    ("a cat <|image|> what is this <|image|> and that", [WIDE, SQUARE], 10),
    ("<|image|> what is this", [SQUARE], 7),
    ("just some text here", [], 9),
    ("<|image|><|image|> two", [SQUARE, WIDE], 12),
)


def _case(hf: Any, processor: Any, text: str, images: list, max_tokens: int) -> dict[str, Any]:
    config = hf.config
    inputs = processor(text=[text], images=[images] if images else None, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    with torch.inference_mode():
        out = hf.generate(
            **inputs,
            max_new_tokens=max_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        states, windows = None, ()
        if images:  # what the image encoder service computes: tower + projector
            vision = hf.model.vision_model(
                pixel_values=inputs["pixel_values"],
                aspect_ratio_ids=inputs["aspect_ratio_ids"],
                aspect_ratio_mask=inputs["aspect_ratio_mask"],
            ).last_hidden_state  # [1, images, tiles, patches, vision_output_dim]
            projected = hf.model.multi_modal_projector(vision)
            states = projected.reshape(-1, config.text_config.hidden_size)  # [S, hidden]
            windows = image_cross_windows(ids, config.image_token_index, _attended(config, inputs))
    tops = [set(step[0].topk(TOP_N).indices.tolist()) for step in out.logits]
    reference = (out.sequences[0, len(ids) :].tolist(), tops)
    mask = inputs.get("cross_attention_mask")
    return dict(
        ids=ids,
        states=states,
        windows=windows,
        max_tokens=max_tokens,
        reference=reference,
        hf_mask=mask,
    )


def _attended(config: Any, inputs: Any) -> list[tuple[int, int]]:
    """Per image its real tiles' rows among the request's states (padding tiles after)."""
    patches = mllama_num_patches(config.vision_config)
    block = config.vision_config.max_num_tiles * patches
    tiles = inputs["aspect_ratio_mask"][0].sum(-1).tolist()
    return [(i * block, i * block + n * patches) for i, n in enumerate(tiles)]


@pytest.fixture(scope="module")
def mllama() -> dict[str, Any]:
    path = str(tiny_model_path("mllama"))
    processor = AutoProcessor.from_pretrained(path)
    hf = MllamaForConditionalGeneration.from_pretrained(path).eval()
    cases = [_case(hf, processor, *prompt) for prompt in PROMPTS]
    return {"path": path, "cases": cases, "config": hf.config}


def _generate(engine: Engine, cases: list[dict]) -> list[Any]:
    params = [
        SamplingParams(temperature=0.0, max_tokens=c["max_tokens"], logprobs=TOP_N) for c in cases
    ]
    return engine.generate(
        [c["ids"] for c in cases],
        params,
        encoder_states=[c["states"] for c in cases],
        cross_windows=[c["windows"] for c in cases],
    )


def test_alone_and_batched_equal_hf_generate(mllama: dict) -> None:
    engine = Engine(EngineConfig(model=mllama["path"], block_size=4))
    assert engine.loaded.impl_name == "native"
    for index, case in enumerate(mllama["cases"]):
        assert_greedy_matches(_generate(engine, [case]), [case["reference"]], f"alone {index}")
    # 8 KV blocks of 4 tokens cannot hold eight sequences of up to 26: preemption; a budget
    # of 3 tokens cuts the prompts into chunks that start inside the images' windows
    cases = mllama["cases"] * 2
    for overrides in ({"num_blocks": 8}, {"max_num_batched_tokens": 3}):
        engine = Engine(EngineConfig(model=mllama["path"], block_size=4, **overrides))
        outputs = _generate(engine, cases)
        assert_greedy_matches(outputs, [c["reference"] for c in cases], f"{overrides}")
        if "num_blocks" in overrides:
            assert engine.scheduler.num_preemptions > 0


def test_the_images_change_the_output(mllama: dict) -> None:
    """Guards the test itself: without its images (or with the wrong windows) a prompt's
    greedy tokens differ, so the parity above could fail."""
    engine = Engine(EngineConfig(model=mllama["path"], block_size=4))
    case = mllama["cases"][0]
    params = SamplingParams(temperature=0.0, max_tokens=case["max_tokens"])
    blind = engine.generate([case["ids"]], params)[0]
    everything = engine.generate([case["ids"]], params, [case["states"]])[0]
    for out in (blind, everything):
        assert list(out.token_ids) != case["reference"][0]


def test_windows_equal_hf_cross_attention_mask(mllama: dict) -> None:
    config = mllama["config"]
    patches = mllama_num_patches(config.vision_config)
    for case in mllama["cases"]:
        if case["hf_mask"] is None:
            assert case["windows"] == ()
            continue
        mask = case["hf_mask"][0].repeat_interleave(patches, dim=-1).flatten(1).bool()  # [L, S]
        ours = torch.zeros_like(mask)
        starts = [start for start, _ in case["windows"]]
        for position in range(mask.shape[0]):
            index = max((i for i, s in enumerate(starts) if s <= position), default=None)
            for start, end in case["windows"][index][1] if index is not None else ():
                ours[position, start:end] = True
        assert torch.equal(ours, mask)


def test_a_missing_gate_or_bad_windows_are_refused(mllama: dict) -> None:
    path = tiny_model_path("mllama")
    model = NativeMllama(AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iterate_weights(path) if "1.cross_attn_mlp_gate" not in n]
    with pytest.raises(InvalidRequest, match="lacks weights for: model.layers.1.cross_attn_mlp"):
        model.load_weights(weights)
    with pytest.raises(ValueError, match="2 image token"):
        image_cross_windows([5, 6, 5], 5, [(0, 5)])
    engine = Engine(EngineConfig(model=mllama["path"], block_size=4, num_blocks=16))
    case = mllama["cases"][1]
    with pytest.raises(InvalidRequest, match="outside the request's 10 encoder states"):
        engine.add_request(
            None, case["ids"], encoder_states=case["states"], cross_windows=((1, ((0, 11),)),)
        )
