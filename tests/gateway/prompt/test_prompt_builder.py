"""Prompt building matches the HF processors token for token; M-RoPE matches `get_rope_index`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gateway.prompt.builder import PromptBuilder
from gateway.prompt.mrope import VisionRun, mrope_position_delta, mrope_positions
from gateway.prompt.placeholders import ModalityTokens
from gateway.prompt.slots import BuiltPrompt, MediaSlot, PlaceholderRange
from gateway.tools.tiny_models import (
    LLAVA_IMAGE_TOKENS,
    QWEN2_5_VL_VISION,
    SAMPLING_RATE,
    tiny_model_path,
)
from protos.errors import InvalidRequest
from protos.hf_processor import load_processor

QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
QWEN_AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"


# ----------------------------------------------------------------------------- helpers


def _user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _runs(token_ids: Sequence[int], token_id: int) -> list[tuple[int, int]]:
    """(offset, length) of each maximal run of `token_id`."""
    runs: list[tuple[int, int]] = []
    for i, token in enumerate(token_ids):
        if token != token_id:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _ids(batch: Any) -> list[int]:
    ids = batch["input_ids"]
    return list(ids[0].tolist() if hasattr(ids, "tolist") else ids[0])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def llava() -> PromptBuilder:
    return PromptBuilder.from_pretrained(tiny_model_path("llava"))


@pytest.fixture(scope="module")
def qwen2_vl() -> PromptBuilder:
    return PromptBuilder.from_pretrained(tiny_model_path("qwen2_vl"))


@pytest.fixture(scope="module")
def qwen2_audio() -> PromptBuilder:
    return PromptBuilder.from_pretrained(tiny_model_path("qwen2_audio"))


@pytest.fixture(scope="module")
def llama() -> PromptBuilder:
    return PromptBuilder.from_pretrained(tiny_model_path("llama"))


@pytest.fixture(scope="module")
def llava_processor() -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_path("llava"))


@pytest.fixture(scope="module")
def audio_processor() -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_path("qwen2_audio"))


@pytest.fixture(scope="module")
def qwen2_vl_model() -> Any:
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_path("qwen2_vl")).eval()


# ----------------------------------------------------------------------------- LLaVA


@pytest.mark.parametrize(
    "prompt",
    [
        "USER: <image>\nWhat is in this picture? ASSISTANT:",
        "USER: <image> and <image>\nDescribe the image. ASSISTANT:",
        "<image><image>Hello",  # adjacent items must still get their own ranges
    ],
)
def test_llava_raw_prompt_matches_processor(
    llava: PromptBuilder, llava_processor: Any, prompt: str
) -> None:
    images = [_image((32, 32), seed) for seed in range(prompt.count("<image>"))]
    expected = _ids(llava_processor(text=prompt, images=images))
    slots = [MediaSlot("image", LLAVA_IMAGE_TOKENS, f"img{i}") for i in range(len(images))]

    built = llava.build(prompt, slots)

    assert built.token_ids == expected
    assert built.mrope_positions is None
    image_id = llava.tokenizer.convert_tokens_to_ids("<image>")
    assert expected.count(image_id) == LLAVA_IMAGE_TOKENS * len(images)
    assert [r.item_index for r in built.ranges] == list(range(len(images)))
    assert all(r.length == LLAVA_IMAGE_TOKENS for r in built.ranges)
    for r in built.ranges:
        assert set(built.token_ids[r.offset : r.offset + r.length]) == {image_id}
    assert built.ranges[0].offset == expected.index(image_id)


@pytest.mark.parametrize("num_images", [1, 2])
def test_llava_chat_matches_processor_apply_chat_template(
    llava: PromptBuilder, llava_processor: Any, num_images: int
) -> None:
    images = [_image((32, 32), seed) for seed in range(num_images)]
    parts = [{"type": "image", "image": img} for img in images]
    hf_messages = _user(*parts, _text("What is in this picture?"))
    expected = _ids(
        llava_processor.apply_chat_template(
            hf_messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
    )
    ours = llava.render_chat(
        _user(*[{"type": "image"}] * num_images, _text("What is in this picture?"))
    )
    slots = [MediaSlot("image", LLAVA_IMAGE_TOKENS, f"img{i}") for i in range(num_images)]

    built = llava.build(ours, slots)

    assert ours.startswith("<s>") and ours.count("<image>") == num_images
    assert built.token_ids == expected
    assert built.token_ids[:2] != [1, 1]  # the template's BOS is not doubled


def test_bos_rule_for_prompts_that_start_with_bos(
    llava: PromptBuilder, llava_processor: Any
) -> None:
    prompt = "<s>USER: <image>\nHi ASSISTANT:"
    slots = [MediaSlot("image", LLAVA_IMAGE_TOKENS, "a")]
    processor_ids = _ids(llava_processor(text=prompt, images=[_image((32, 32), 0)]))

    assert llava.build(prompt, slots, add_special_tokens=True).token_ids == processor_ids
    assert processor_ids[:2] == [1, 1]
    assert llava.build(prompt, slots).token_ids == processor_ids[1:]  # auto: one BOS
    assert llava.text_only("Hi there")[0] == 1
    assert llava.text_only("Hi there", add_special_tokens=False)[0] != 1


# ----------------------------------------------------------------------------- Qwen2-Audio


def _audio_tokens(feature_attention_mask: Any) -> list[int]:
    """Qwen2-Audio's documented count: two stride-2 reductions of the mel length."""
    lengths = np.asarray(feature_attention_mask).sum(-1).tolist()
    return [(((n - 1) // 2 + 1) - 2) // 2 + 1 for n in lengths]


@pytest.mark.parametrize("seconds", [(1.3,), (0.7, 1.9)])
def test_qwen2_audio_matches_processor(
    qwen2_audio: PromptBuilder, audio_processor: Any, seconds: tuple[float, ...]
) -> None:
    clips = [_tone(s, 440.0 * (i + 1)) for i, s in enumerate(seconds)]
    prompt = qwen2_audio.render_chat(_user(*[{"type": "audio"}] * len(clips), _text("What sound?")))
    out = audio_processor(text=prompt, audio=clips, sampling_rate=SAMPLING_RATE)
    expected = _ids(out)
    counts = _audio_tokens(out["feature_attention_mask"])
    slots = [MediaSlot("audio", n, f"clip{i}") for i, n in enumerate(counts)]

    built = qwen2_audio.build(prompt, slots)

    assert prompt.count(QWEN_AUDIO) == len(clips)
    assert built.token_ids == expected
    audio_id = qwen2_audio.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert [(r.offset, r.length) for r in built.ranges] == _runs(expected, audio_id)
    assert [r.length for r in built.ranges] == counts
    assert len(set(counts)) == len(counts)  # clips of different lengths -> different counts


# ----------------------------------------------------------------------------- Qwen2-VL


def _qwen_size(model: Path, filename: str) -> dict[str, int]:
    return json.loads((model / filename).read_text())["size"]


def _video_grid(model: Path, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Qwen2VLVideoProcessor's grid: smart_resize each frame, pad frames to the temporal patch."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    config = json.loads((model / "video_preprocessor_config.json").read_text())
    patch, merge, temporal = (
        config["patch_size"],
        config["merge_size"],
        config["temporal_patch_size"],
    )
    size = config["size"]
    resized_h, resized_w = smart_resize(
        height, width, patch * merge, size["shortest_edge"], size["longest_edge"]
    )
    return math.ceil(num_frames / temporal), resized_h // patch, resized_w // patch


def _image_grids(model: Path, images: Sequence[Image.Image]) -> list[tuple[int, int, int]]:
    from transformers import AutoImageProcessor

    if not images:
        return []
    processor = AutoImageProcessor.from_pretrained(model)
    grids = processor(images=list(images), return_tensors="pt")["image_grid_thw"]
    return [tuple(int(g) for g in row) for row in grids]


def _qwen_reference(
    builder: PromptBuilder, text: str, image_grids: Sequence[tuple], video_grids: Sequence[tuple]
) -> list[int]:
    """Qwen2VLProcessor's documented expansion: each pad -> prod(grid) // merge**2 pads."""
    merge = builder.spatial_merge_size
    for pad, grids in (("<|image_pad|>", image_grids), ("<|video_pad|>", video_grids)):
        pieces = text.split(pad)
        assert len(pieces) == len(grids) + 1
        text = pieces[0] + "".join(
            "\0" * (math.prod(g) // merge**2) + rest
            for g, rest in zip(grids, pieces[1:], strict=True)
        )
        text = text.replace("\0", pad)
    return builder.tokenizer(text)["input_ids"]


QWEN_CASES = {
    # name: (image sizes (w, h), videos (frames, h, w), parts in prompt order)
    "image": ([(84, 56)], [], ["image"]),
    "video": ([], [(4, 56, 56)], ["video"]),
    "image+video": ([(56, 112)], [(6, 84, 56)], ["image", "video"]),
    "video+image+image": ([(56, 56), (112, 84)], [(2, 56, 84)], ["video", "image", "image"]),
}


def _qwen_case(builder: PromptBuilder, name: str) -> tuple[str, list[MediaSlot], dict[str, Any]]:
    model = tiny_model_path("qwen2_vl")
    sizes, videos, order = QWEN_CASES[name]
    images = [_image(size, seed) for seed, size in enumerate(sizes)]
    image_grids = _image_grids(model, images)
    video_grids = [_video_grid(model, *video) for video in videos]
    grids = {"image": iter(image_grids), "video": iter(video_grids)}
    merge = builder.spatial_merge_size
    slots = []
    for i, modality in enumerate(order):
        grid = next(grids[modality])
        slots.append(MediaSlot(modality, math.prod(grid) // merge**2, f"h{i}", grid))
    parts = [{"type": m} for m in order]
    prompt = builder.render_chat(_user(*parts, _text("Describe the video.")))
    extra = {"images": images, "image_grids": image_grids, "video_grids": video_grids}
    return prompt, slots, extra


@pytest.mark.parametrize("case", list(QWEN_CASES))
def test_qwen2_vl_matches_processor_reference(qwen2_vl: PromptBuilder, case: str) -> None:
    prompt, slots, extra = _qwen_case(qwen2_vl, case)
    expected = _qwen_reference(qwen2_vl, prompt, extra["image_grids"], extra["video_grids"])

    built = qwen2_vl.build(prompt, slots)

    assert prompt.count(QWEN_IMAGE) == len(extra["image_grids"])
    assert prompt.count(QWEN_VIDEO) == len(extra["video_grids"])
    assert built.token_ids == expected
    assert [r.length for r in built.ranges] == [s.num_tokens for s in slots]
    assert [r.item_index for r in built.ranges] == list(range(len(slots)))
    pads = {"image": "<|image_pad|>", "video": "<|video_pad|>"}
    for r in built.ranges:
        pad_id = qwen2_vl.tokenizer.convert_tokens_to_ids(pads[slots[r.item_index].modality])
        start_id = qwen2_vl.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert built.token_ids[r.offset - 1] == start_id
        assert set(built.token_ids[r.offset : r.offset + r.length]) == {pad_id}
        assert built.token_ids[r.offset + r.length] != pad_id


@pytest.mark.parametrize("case", ["image", "video", "image+video"])
def test_qwen2_vl_matches_the_full_processor(qwen2_vl: PromptBuilder, case: str) -> None:
    """HF's Qwen2VLProcessor expands the placeholders itself; without torchvision its video
    processor runs on Pillow / torch ops (protos.hf_processor), the expansion is HF's own."""
    processor = load_processor(tiny_model_path("qwen2_vl"))
    prompt, slots, extra = _qwen_case(qwen2_vl, case)
    _, videos, _ = QWEN_CASES[case]
    frames = [
        np.random.default_rng(7).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        for n, h, w in videos
    ]
    out = processor(
        text=prompt, images=extra["images"] or None, videos=frames or None, return_tensors="pt"
    )
    assert qwen2_vl.build(prompt, slots).token_ids == _ids(out)


def _hf_rope_index(model: Any, built: BuiltPrompt, slots: Sequence[MediaSlot]) -> Any:
    ids = torch.tensor([built.token_ids])
    types = torch.zeros_like(ids, dtype=torch.int32)
    for r in built.ranges:
        types[0, r.offset : r.offset + r.length] = (
            1 if slots[r.item_index].modality == "image" else 2
        )
    grids = {
        m: torch.tensor([s.grid_thw for s in slots if s.modality == m])
        if any(s.modality == m for s in slots)
        else None
        for m in ("image", "video")
    }
    return model.get_rope_index(
        ids, types, grids["image"], grids["video"], attention_mask=torch.ones_like(ids)
    )


@pytest.mark.parametrize("case", list(QWEN_CASES))
def test_qwen2_vl_mrope_matches_hf_get_rope_index(
    qwen2_vl: PromptBuilder, qwen2_vl_model: Any, case: str
) -> None:
    prompt, slots, _ = _qwen_case(qwen2_vl, case)
    built = qwen2_vl.build(prompt, slots)

    positions, deltas = _hf_rope_index(qwen2_vl_model.model, built, slots)

    assert built.mrope_positions is not None
    assert built.mrope_positions.dtype == torch.int64
    assert built.mrope_positions.shape == (3, len(built.token_ids))
    assert torch.equal(built.mrope_positions, positions[:, 0])
    assert built.mrope_position_delta == int(deltas[0, 0])


def test_text_after_a_long_video_continues_after_its_largest_position(
    qwen2_vl: PromptBuilder,
) -> None:
    # NOTE: 12 frames -> t=6 exceeds h'=w'=2. The Qwen reference (and vLLM) continue text at the
    # largest position + 1 = 9; transformers 5.x's get_rope_index restarts it at 3 + max(h', w').
    prompt = f"ab{QWEN_VIDEO}cd"
    built = qwen2_vl.build(prompt, [MediaSlot("video", 24, "v", (6, 4, 4))])
    positions = built.mrope_positions
    assert positions is not None
    (r,) = built.ranges
    video = positions[:, r.offset : r.offset + r.length]
    start = int(positions[0, r.offset - 1]) + 1
    assert video[0].unique().tolist() == list(range(start, start + 6))
    assert video[1].unique().tolist() == [start, start + 1]
    after = positions[:, r.offset + r.length :]
    assert torch.equal(after, after[:1].expand(3, -1))
    assert after[0].tolist() == list(range(start + 6, start + 6 + after.shape[1]))
    assert built.mrope_position_delta == int(positions.max()) + 1 - len(built.token_ids)


# ----------------------------------------------------------------------------- Qwen2.5-VL


@pytest.fixture(scope="module")
def qwen2_5_vl(qwen2_vl: PromptBuilder) -> PromptBuilder:
    from transformers import Qwen2_5_VLConfig

    source = qwen2_vl.config
    config = Qwen2_5_VLConfig(
        text_config=source.text_config.to_dict(),
        vision_config=dict(QWEN2_5_VL_VISION),
        image_token_id=source.image_token_id,
        video_token_id=source.video_token_id,
        vision_start_token_id=source.vision_start_token_id,
        vision_end_token_id=source.vision_end_token_id,
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )
    return PromptBuilder(qwen2_vl.tokenizer, config, qwen2_vl.chat_template)


class _RopeIndexOnly:
    """Just enough of Qwen2_5_VLModel to call its get_rope_index without weights."""

    def __init__(self, config: Any) -> None:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

        self.config = config
        self._model_cls = Qwen2_5_VLModel

    def get_vision_position_ids(self, *args: Any, **kwargs: Any) -> Any:
        return self._model_cls.get_vision_position_ids(self, *args, **kwargs)

    def get_rope_index(self, *args: Any, **kwargs: Any) -> Any:
        return self._model_cls.get_rope_index(self, *args, **kwargs)


@pytest.mark.parametrize("second_per_grid_t", [2 / 24, 0.25, 0.5])
def test_qwen2_5_vl_mrope_matches_hf_get_rope_index(
    qwen2_5_vl: PromptBuilder, second_per_grid_t: float
) -> None:
    prompt = f"Look: {QWEN_IMAGE} then {QWEN_VIDEO} now?"
    slots = [
        MediaSlot("image", 4, "i", (1, 4, 4)),
        MediaSlot("video", 64, "v", (4, 8, 8), second_per_grid_t=second_per_grid_t),
    ]
    built = qwen2_5_vl.build(prompt, slots)
    ids = torch.tensor([built.token_ids])
    types = torch.zeros_like(ids, dtype=torch.int32)
    image, video = built.ranges
    types[0, image.offset : image.offset + image.length] = 1
    types[0, video.offset : video.offset + video.length] = 2

    positions, deltas = _RopeIndexOnly(qwen2_5_vl.config).get_rope_index(
        ids,
        types,
        torch.tensor([[1, 4, 4]]),
        torch.tensor([[4, 8, 8]]),
        second_per_grid_ts=torch.tensor([second_per_grid_t]),
        attention_mask=torch.ones_like(ids),
    )

    assert torch.equal(built.mrope_positions, positions[:, 0])
    assert built.mrope_position_delta == int(deltas[0, 0])


def test_qwen2_5_vl_scales_video_time_but_not_images(qwen2_5_vl: PromptBuilder) -> None:
    slots = [MediaSlot("video", 16, "v", (4, 4, 4), second_per_grid_t=1.0)]
    built = qwen2_5_vl.build(f"x{QWEN_VIDEO}", slots)
    (r,) = built.ranges
    temporal = built.mrope_positions[0, r.offset : r.offset + r.length]
    start = int(temporal[0])
    assert temporal.unique().tolist() == [start, start + 2, start + 4, start + 6]  # 1 s * 2 tok/s
    image = qwen2_5_vl.build(f"x{QWEN_IMAGE}", [MediaSlot("image", 4, "i", (1, 4, 4))])
    (r,) = image.ranges
    assert image.mrope_positions[0, r.offset : r.offset + r.length].unique().numel() == 1


# ----------------------------------------------------------------------------- M-RoPE unit


def test_mrope_positions_text_only_and_grid_layout() -> None:
    assert torch.equal(mrope_positions(5, [], 2), torch.arange(5).expand(3, -1))
    positions = mrope_positions(10, [VisionRun(2, (1, 4, 6))], 2)  # 2x3 merged grid at 2..7
    assert positions.tolist() == [
        [0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
        [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
        [0, 1, 2, 3, 4, 2, 3, 4, 5, 6],
    ]
    assert mrope_position_delta(positions) == 7 - 10


def test_mrope_positions_rejects_a_run_past_the_prompt() -> None:
    with pytest.raises(ValueError, match="past the prompt"):
        mrope_positions(4, [VisionRun(2, (1, 4, 4))], 2)


# ----------------------------------------------------------------------------- chat rendering


def test_render_chat_emits_each_family_placeholder(
    llava: PromptBuilder, qwen2_vl: PromptBuilder, qwen2_audio: PromptBuilder
) -> None:
    assert llava.placeholder("image") == "<image>"
    assert qwen2_vl.placeholder("image") == QWEN_IMAGE
    assert qwen2_vl.placeholder("video") == QWEN_VIDEO
    assert qwen2_audio.placeholder("audio") == QWEN_AUDIO
    assert "<image>" in llava.render_chat(_user({"type": "image"}, _text("hi")))
    rendered = qwen2_vl.render_chat(_user({"type": "video"}, {"type": "image"}, _text("hi")))
    assert rendered.index(QWEN_VIDEO) < rendered.index(QWEN_IMAGE)
    assert QWEN_AUDIO in qwen2_audio.render_chat(_user({"type": "audio"}, _text("hi")))


def test_render_chat_accepts_openai_part_types_and_string_content(qwen2_vl: PromptBuilder) -> None:
    openai = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "What is it?"},
            ],
        },
    ]
    rendered = qwen2_vl.render_chat(openai, add_generation_prompt=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{QWEN_IMAGE}What is it?<|im_end|>\n"
    )


def test_render_chat_with_a_string_only_template(llama: PromptBuilder) -> None:
    template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    builder = PromptBuilder(llama.tokenizer, llama.config, template)
    rendered = builder.render_chat(_user(_text("Hello"), _text("world")))
    assert rendered == "[user] Hello\nworld\n[assistant]"


def test_render_chat_without_template_is_a_clear_error(llama: PromptBuilder) -> None:
    builder = PromptBuilder(llama.tokenizer, llama.config, None)
    with pytest.raises(InvalidRequest, match="no chat template"):
        builder.render_chat(_user(_text("hi")))


def test_render_chat_refuses_media_the_model_does_not_take(
    llama: PromptBuilder, qwen2_audio: PromptBuilder
) -> None:
    with pytest.raises(InvalidRequest, match="does not take image input"):
        llama.render_chat(_user({"type": "image"}, _text("hi")))
    with pytest.raises(InvalidRequest, match="does not take video input"):
        qwen2_audio.render_chat(_user({"type": "video"}))
    with pytest.raises(InvalidRequest, match="Unknown content part type 'file'"):
        qwen2_audio.render_chat(_user({"type": "file"}))


# ----------------------------------------------------------------------------- errors


def test_placeholder_counts_must_match_items(llava: PromptBuilder, qwen2_vl: PromptBuilder) -> None:
    one = [MediaSlot("image", LLAVA_IMAGE_TOKENS, "a")]
    with pytest.raises(InvalidRequest, match=r"0 <image> placeholder\(s\) but 1 image\(s\)"):
        llava.build("no placeholder here", one)
    with pytest.raises(InvalidRequest, match=r"2 <image> placeholder\(s\) but 1 image\(s\)"):
        llava.build("<image><image>", one)
    with pytest.raises(InvalidRequest, match="put one <image> where each image goes"):
        llava.build("<image>", [])
    video = [MediaSlot("video", 8, "v", (2, 4, 4))]
    with pytest.raises(InvalidRequest, match=f"put one {re.escape(QWEN_VIDEO)} where each video"):
        qwen2_vl.build("no video here", video)
    with pytest.raises(InvalidRequest, match=rf"1 {re.escape('<|image_pad|>')} placeholder"):
        qwen2_vl.build(f"{QWEN_IMAGE}{QWEN_VIDEO}", video)


def test_modality_the_model_lacks_is_refused(llava: PromptBuilder, llama: PromptBuilder) -> None:
    with pytest.raises(InvalidRequest, match="does not take audio input"):
        llava.build("<image>", [MediaSlot("audio", 3, "a")])
    with pytest.raises(InvalidRequest, match="LlamaForCausalLM does not take image input"):
        llama.build("hello", [MediaSlot("image", 3, "a")])
    with pytest.raises(InvalidRequest, match="video"):
        llama.placeholder("video")


def test_qwen_grid_must_agree_with_embedding_rows(qwen2_vl: PromptBuilder) -> None:
    with pytest.raises(InvalidRequest, match="needs 4"):
        qwen2_vl.build(QWEN_IMAGE, [MediaSlot("image", 5, "i", (1, 4, 4))])
    with pytest.raises(InvalidRequest, match="needs grid_thw"):
        qwen2_vl.build(QWEN_IMAGE, [MediaSlot("image", 4, "i")])


def test_media_slot_validation() -> None:
    with pytest.raises(InvalidRequest):
        MediaSlot("smell", 3, "x")
    with pytest.raises(InvalidRequest):
        MediaSlot("image", 0, "x")


# ----------------------------------------------------------------------------- text-only


def test_text_only_model_tokenizes_like_its_tokenizer(llama: PromptBuilder) -> None:
    text = "Hello, world! <image> is just text here."
    built = llama.build(text, [])
    assert built == BuiltPrompt(llama.tokenizer(text)["input_ids"], (), None)
    assert llama.text_only(text) == built.token_ids
    assert llama.modalities == ()


def _spliced(llava: PromptBuilder) -> PromptBuilder:
    """The LLaVA tiny model under an architecture with no native family: SPLICED."""
    config = type(llava.config).from_dict(
        {**llava.config.to_dict(), "architectures": ["MyLlavaLikeForConditionalGeneration"]}
    )
    image_id = config.image_token_index
    tokens = {"image": ModalityTokens("<image>", image_id, "<image>")}
    return PromptBuilder(llava.tokenizer, config, llava.chat_template, tokens)


def test_an_architecture_without_a_family_splices_the_encoders_replacement(
    llava: PromptBuilder,
) -> None:
    builder = _spliced(llava)
    image_id = builder.config.image_token_index
    slot = MediaSlot("image", 3, "x", None, None, "<image>", "<image>" * 3, image_id)
    built = builder.build("a <image> b", [slot])
    assert builder.family.spliced and builder.placeholder("image") == "<image>"
    assert built.ranges == (PlaceholderRange(0, built.token_ids.index(image_id), 3),)
    assert built.token_ids.count(image_id) == 3


def test_spliced_items_may_have_prompt_tokens_between_their_embeddings(
    llava: PromptBuilder,
) -> None:
    # Like [IMG_BREAK] or row/col tags: positions inside an item that keep their token.
    builder = _spliced(llava)
    image_id = builder.config.image_token_index
    eos = builder.tokenizer.eos_token
    first = MediaSlot(
        "image", 3, "a", None, None, "<image>", f"<image>{eos}<image><image>", image_id
    )
    second = MediaSlot("image", 1, "b", None, None, "<image>", "<image>", image_id)
    built = builder.build("x <image> y <image>", [first, second])
    r0, r1 = built.ranges
    assert (r0.length, r0.is_embed, r0.num_embeds) == (4, (True, False, True, True), 3)
    assert built.token_ids[r0.offset + 1] == builder.tokenizer.eos_token_id
    assert (r1.item_index, r1.length, r1.is_embed) == (1, 1, None)


def test_spliced_placeholder_count_must_match_the_items(llava: PromptBuilder) -> None:
    builder = _spliced(llava)
    slot = MediaSlot("image", 1, "x", None, None, "<image>", "<image>", 6)
    with pytest.raises(InvalidRequest, match="has 0 <image> placeholder"):
        builder.build("no placeholder", [slot])
    with pytest.raises(InvalidRequest, match="precomputed embeddings are not supported"):
        builder.build("a <image>", [MediaSlot("image", 1, "x")])
