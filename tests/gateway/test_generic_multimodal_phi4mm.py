"""Phi-4-multimodal on the generic path: offline `LLM.generate` greedy equals HF `generate`
for T + I (dynamic HD crops, padded crop masked) and T + A, and the gateway's prompt ids equal
the HF processor's (built with our torch image processor: HF's needs torchvision).

NOTE: one item per prompt. With two images (or two clips) of different sizes HF runs them as
one padded batch, and its own vision tower (and audio encoder) then gives an item other
features than when it runs alone (0.08 on a crop with no masked patch); we encode each item
alone, as HF does for a one-item prompt, so multi-item prompts do not match HF's batched ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from encoder_service import Encoder
from gateway import LLM, SamplingParams
from gateway.prompt.builder import PromptBuilder
from gateway.prompt.slots import MediaSlot
from gateway.tools.tiny_models import tiny_model_path
from protos.encoder_messages import MediaItem
from protos.hf_processor import load_processor
from tests.parity import TOP_N, check_logprobs_close, our_tops

MAX_TOKENS = 12
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=TOP_N, ignore_eos=True)
ENGINE = {"block_size": 4, "num_blocks": 512, "max_num_seqs": 8}
# NOTE: as in test_generic_multimodal_b: fp32 tiny models agree to ~1e-6 where tokens match
LOGPROB_ATOL = 1e-4
SEED_ROW = pytest.mark.seed_row("Phi4MMForCausalLM", "generate")
IMAGE_PROMPT = "<|image|>What is it?"
AUDIO_PROMPT = "<|audio|>Transcribe it."


def _image() -> Image.Image:
    """500 x 300 with a gradient: 2 x 1 crops, the second partly white padding (masked)."""
    x = np.linspace(0, 255, 500, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, 300, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([x + 0 * y, y + 0 * x, 255 - (x + y) / 2], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def _audio() -> np.ndarray:
    t = np.arange(16000, dtype=np.float32) / 16000
    return (0.2 * np.sin(2 * np.pi * 440 * t) * np.exp(-2 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def llm() -> Iterator[LLM]:
    engine = LLM(model=str(tiny_model_path("phi4mm")), **ENGINE)
    yield engine
    engine.close()


def _hf_inputs(text: str, **media: Any) -> dict[str, Any]:
    processor = load_processor(tiny_model_path("phi4mm"))
    rate = {"sampling_rate": 16000} if "audio" in media else {}
    return dict(processor(text=text, return_tensors="pt", **media, **rate))


def _hf_generate(inputs: dict[str, Any]) -> tuple[list, list, list[float]]:
    from transformers import Phi4MultimodalForCausalLM

    model = Phi4MultimodalForCausalLM.from_pretrained(tiny_model_path("phi4mm")).eval()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=MAX_TOKENS,
            min_new_tokens=MAX_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    steps = [step[0].float().log_softmax(-1) for step in out.logits]
    tops = [set(step.topk(TOP_N).indices.tolist()) for step in steps]
    return tokens, tops, [float(step[t]) for step, t in zip(steps, tokens, strict=True)]


def _check(out: Any, inputs: dict[str, Any], name: str) -> None:
    assert list(out.prompt_token_ids) == inputs["input_ids"][0].tolist()
    completion = out.outputs[0]
    tokens, tops, logprobs = _hf_generate(inputs)
    ours = list(completion.token_ids)
    matched = check_logprobs_close(ours, our_tops(completion.logprobs), tokens, tops, name)
    assert matched >= MAX_TOKENS // 2, f"{name}: only {matched} tokens matched HF"
    for i in range(matched):
        ours_lp = completion.logprobs[i].logprob
        assert abs(ours_lp - logprobs[i]) < LOGPROB_ATOL, (
            f"{name}: token {i} logprob {ours_lp} vs HF {logprobs[i]}"
        )


@SEED_ROW
def test_text_and_image_match_hf(llm: LLM) -> None:
    image = _image()
    out = llm.generate({"prompt": IMAGE_PROMPT, "multi_modal_data": {"image": image}}, GREEDY)
    _check(out[0], _hf_inputs(IMAGE_PROMPT, images=[image]), "phi4mm-image")


@SEED_ROW
def test_text_and_audio_match_hf(llm: LLM) -> None:
    audio = _audio()
    prompt = {"prompt": AUDIO_PROMPT, "multi_modal_data": {"audio": (audio, 16000)}}
    out = llm.generate(prompt, GREEDY)
    _check(out[0], _hf_inputs(AUDIO_PROMPT, audio=[audio]), "phi4mm-audio")


def test_image_with_audio_is_refused_not_run_off_hf(llm: LLM) -> None:
    """HF projects audio with other weights when images share the prompt; our encoder embeds
    each item alone, so such prompts are refused with the rule instead."""
    from protos.errors import InvalidRequest

    media = {"image": _image(), "audio": (_audio(), 16000)}
    with pytest.raises(InvalidRequest, match="cannot be combined"):
        llm.generate({"prompt": "", "multi_modal_data": media}, GREEDY)


def test_prompt_ids_equal_the_processors() -> None:
    """The gateway's prompt (encoder answer + splice, no pixels) == HF's processor's ids."""
    path, image = tiny_model_path("phi4mm"), _image()
    with Encoder.from_pretrained(path, "image") as encoder:
        (result,) = encoder.encode([MediaItem(decoded=image)])
    slot = MediaSlot(
        "image",
        result.num_tokens,
        result.content_hash,
        placeholder=result.metadata["placeholder"],
        replacement=result.metadata["replacement"],
        embed_token_id=result.metadata["embed_token_id"],
    )
    built = PromptBuilder.from_pretrained(path).build(IMAGE_PROMPT, [slot])
    assert built.token_ids == _hf_inputs(IMAGE_PROMPT, images=[image])["input_ids"][0].tolist()
    assert result.num_tokens == 721
