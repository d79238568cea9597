"""The offline LLM API on tiny multimodal models: greedy output equals HF generate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoImageProcessor

from gateway import LLM, SamplingParams
from gateway.prompt.builder import PromptBuilder
from gateway.prompt.slots import MediaSlot
from gateway.tools.tiny_models import tiny_model_path
from protos.errors import InvalidRequest
from tests import mm_reference as ref
from tests.parity import check_logprobs_close, our_tops

MAX_TOKENS = 12
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)
ENGINE = {"block_size": 4, "num_blocks": 256, "max_num_seqs": 8}


def _check(out: object, inputs: dict, path: Path, name: str) -> None:
    completion = out.outputs[0]
    tokens, tops = ref.generate(ref.hf_model(path), inputs, MAX_TOKENS)
    matched = check_logprobs_close(
        list(completion.token_ids), our_tops(completion.logprobs), tokens, tops, name
    )
    assert matched >= MAX_TOKENS // 2, f"{name}: only {matched} tokens matched HF"


@pytest.fixture(scope="module")
def llava() -> Iterator[LLM]:
    llm = LLM(model=str(tiny_model_path("llava")), limit_mm_per_prompt={"image": 2}, **ENGINE)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def qwen2_vl() -> Iterator[LLM]:
    llm = LLM(
        model=str(tiny_model_path("qwen2_vl")), limit_mm_per_prompt="image=2,video=1", **ENGINE
    )
    yield llm
    llm.close()


@pytest.mark.seed_row("LlavaForConditionalGeneration", "generate")
def test_llava_one_and_two_images(llava: LLM) -> None:
    path = tiny_model_path("llava")
    red, blue = ref.image((200, 30, 40), 32), ref.image((20, 60, 220), 32)
    one = "USER: <image>\nWhat is it? ASSISTANT:"
    two = "USER: <image> and <image>\nCompare them. ASSISTANT:"
    outs = llava.generate(
        [
            {"prompt": one, "multi_modal_data": {"image": red}},
            {"prompt": two, "multi_modal_data": {"image": [red, blue]}},
        ],
        GREEDY,
    )
    _check(outs[0], ref.llava_inputs(path, one, [red]), path, "llava-1")
    _check(outs[1], ref.llava_inputs(path, two, [red, blue]), path, "llava-2")
    assert outs[0].outputs[0].token_ids != outs[1].outputs[0].token_ids


def test_llava_chat_and_raw_bytes(llava: LLM) -> None:
    import io

    picture = ref.image((10, 200, 90), 32)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    from_pil = llava.chat(
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": picture}, {"type": "text", "text": "Hi"}],
            }
        ],
        GREEDY,
    )[0]
    from_bytes = llava.chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": buffer.getvalue()},
                    {"type": "text", "text": "Hi"},
                ],
            }
        ],
        GREEDY,
    )[0]
    assert from_pil.outputs[0].token_ids == from_bytes.outputs[0].token_ids
    assert from_pil.outputs[0].text == from_bytes.outputs[0].text


def test_llava_refusals(llava: LLM) -> None:
    red = ref.image((200, 30, 40), 32)
    with pytest.raises(InvalidRequest, match="At most 2 image"):
        llava.generate({"prompt": "<image>" * 3, "multi_modal_data": {"image": [red] * 3}}, GREEDY)
    with pytest.raises(InvalidRequest, match="video is not supported"):
        llava.generate(
            {"prompt": "x", "multi_modal_data": {"video": ref.video_frames(4, 32)}}, GREEDY
        )
    with pytest.raises(InvalidRequest, match="placeholder"):
        llava.generate({"prompt": "no placeholder", "multi_modal_data": {"image": red}}, GREEDY)


def _qwen2_vl_ids(path: Path, text: str, images: list, videos: list) -> list[int]:
    builder = PromptBuilder.from_pretrained(str(path))
    processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    slots = []
    for img in images:
        grid = tuple(processor(images=[img], return_tensors="pt")["image_grid_thw"][0].tolist())
        slots.append(MediaSlot("image", grid[0] * grid[1] * grid[2] // 4, "h", grid_thw=grid))
    for frames in videos:
        t, h, w = (frames.shape[0] + 1) // 2, frames.shape[1] // 14, frames.shape[2] // 14
        slots.append(MediaSlot("video", t * h * w // 4, "h", grid_thw=(t, h, w)))
    return builder.build(text, slots).token_ids


@pytest.mark.seed_row("Qwen2VLForConditionalGeneration", "generate")
@pytest.mark.parametrize("kind", ["image", "video", "image+video"])
def test_qwen2_vl_matches_hf(qwen2_vl: LLM, kind: str) -> None:
    path = tiny_model_path("qwen2_vl")
    image_part = "<|vision_start|><|image_pad|><|vision_end|>"
    video_part = "<|vision_start|><|video_pad|><|vision_end|>"
    images = [ref.image((200, 120, 40), 56)] if "image" in kind else []
    videos = [ref.video_frames(4, 56)] if "video" in kind else []
    text = "".join([image_part] * len(images) + [video_part] * len(videos)) + "Describe it."
    data = {}
    if images:
        data["image"] = images[0]
    if videos:
        data["video"] = videos[0]
    out = qwen2_vl.generate({"prompt": text, "multi_modal_data": data}, GREEDY)[0]
    inputs = ref.qwen2_vl_inputs(path, _qwen2_vl_ids(path, text, images, videos), images, videos)
    _check(out, inputs, path, f"qwen2_vl-{kind}")


@pytest.mark.seed_row("Qwen2AudioForConditionalGeneration", "generate")
def test_qwen2_audio_matches_hf() -> None:
    path = tiny_model_path("qwen2_audio")
    llm = LLM(model=str(path), limit_mm_per_prompt={"audio": 2}, **ENGINE)
    try:
        clips = [ref.tone(1.3), ref.tone(0.8, 660.0)]
        one = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat is it?"
        two = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nAudio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\nCompare."
        outs = llm.generate(
            [
                {"prompt": one, "multi_modal_data": {"audio": (clips[0], ref.SAMPLING_RATE)}},
                {
                    "prompt": two,
                    "multi_modal_data": {"audio": [(c, ref.SAMPLING_RATE) for c in clips]},
                },
            ],
            GREEDY,
        )
        _check(outs[0], ref.qwen2_audio_inputs(path, one, clips[:1]), path, "qwen2_audio-1")
        _check(outs[1], ref.qwen2_audio_inputs(path, two, clips), path, "qwen2_audio-2")
    finally:
        llm.close()


def test_apply_model_shows_the_implementation(llava: LLM) -> None:
    """The seed's check: the Transformers fallback reports TransformersForCausalLM."""
    assert llava.apply_model(lambda model: type(model).__name__) == ["LlamaForCausalLM"]
    fallback = LLM(model=str(tiny_model_path("llava")), model_impl="transformers", **ENGINE)
    try:
        assert fallback.apply_model(lambda model: type(model).__name__) == [
            "TransformersForCausalLM"
        ]
        red = ref.image((200, 30, 40), 32)
        prompt = {
            "prompt": "USER: <image>\nWhat is it? ASSISTANT:",
            "multi_modal_data": {"image": red},
        }
        native = llava.generate(prompt, GREEDY)[0].outputs[0].token_ids
        assert fallback.generate(prompt, GREEDY)[0].outputs[0].token_ids == native
    finally:
        fallback.close()


def test_text_only_prompts(llava: LLM) -> None:
    outs = llava.generate(["Hello, my name is", {"prompt_token_ids": [1, 40, 41]}], GREEDY)
    assert len(outs) == 2 and all(len(o.outputs[0].token_ids) == MAX_TOKENS for o in outs)
    assert outs[0].outputs[0].text and outs[0].outputs[0].finish_reason == "length"


def test_chat_input_mistakes_are_sentences(llava: LLM) -> None:
    with pytest.raises(InvalidRequest, match="at least one message"):
        llava.chat([[]], GREEDY)
    with pytest.raises(InvalidRequest, match="content must be a string or a list"):
        llava.chat([{"role": "user", "content": 5}], GREEDY)
    with pytest.raises(InvalidRequest, match="unknown content part"):
        llava.chat([{"role": "user", "content": [{"type": "foo"}]}], GREEDY)
