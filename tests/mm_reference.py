"""HF transformers' own multimodal generate, as the reference for our mesh's output."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tests.parity import TOP_N

SAMPLING_RATE = 16000


def image(color: tuple[int, int, int], size: int, stripes: bool = True) -> Image.Image:
    """A small deterministic picture with some structure, exactly `size` x `size`."""
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[...] = color
    if stripes:
        array[::4, :, :] = 255 - np.array(color, dtype=np.uint8)
        array[:, ::7, 1] = 30
    return Image.fromarray(array)


def video_frames(num_frames: int, size: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of a moving bar."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, :, (t * 9) % size : (t * 9) % size + 8] = (200, 40 + 30 * t, 90)
        frames[t, (t * 5) % size, :] = 255
    return frames


def tone(seconds: float, hertz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    return (0.4 * np.sin(2 * np.pi * hertz * t) + 0.1 * np.sin(2 * np.pi * 3 * hertz * t)).astype(
        np.float32
    )


@cache
def hf_model(path: Path) -> Any:
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        Qwen2AudioForConditionalGeneration,
    )

    arch = AutoConfig.from_pretrained(path).architectures[0]
    if arch == "Qwen2AudioForConditionalGeneration":
        return Qwen2AudioForConditionalGeneration.from_pretrained(path).eval()
    if arch == "AudioFlamingo3ForConditionalGeneration":  # no image-text-to-text class
        from transformers import AudioFlamingo3ForConditionalGeneration

        return AudioFlamingo3ForConditionalGeneration.from_pretrained(path).eval()
    return AutoModelForImageTextToText.from_pretrained(path).eval()


def generate(
    model: Any, inputs: dict[str, Any], max_tokens: int
) -> tuple[list[int], list[set[int]]]:
    """HF greedy tokens and, per position, its top-5 ids."""
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt_len = inputs["input_ids"].shape[1]
    tokens = out.sequences[0, prompt_len:].tolist()
    return tokens, [set(step[0].float().topk(TOP_N).indices.tolist()) for step in out.logits]


def llava_inputs(path: Path, prompt: str, images: list[Image.Image]) -> dict[str, Any]:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    return dict(processor(text=prompt, images=images, return_tensors="pt"))


def qwen2_audio_inputs(path: Path, prompt: str, clips: list[np.ndarray]) -> dict[str, Any]:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    return dict(
        processor(text=prompt, audio=clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    )


def qwen2_vl_inputs(
    path: Path,
    token_ids: list[int],
    images: list[Image.Image] = (),
    videos: list[np.ndarray] = (),
) -> dict[str, Any]:
    """Qwen2-VL's processor needs torchvision (absent here): pixel values from the HF image
    processor, video patches from our preprocessing (proven equal to HF's elsewhere), and the
    prompt ids the caller built (proven equal to HF's expansion in test_prompt.py)."""
    from transformers import AutoConfig, AutoImageProcessor

    from encoder_service.towers.qwen2_vl_processing import Qwen2VLVideoConfig, preprocess_video

    config = AutoConfig.from_pretrained(path)
    inputs: dict[str, Any] = {"input_ids": torch.tensor([token_ids])}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if images:
        processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        inputs.update(dict(processor(images=list(images), return_tensors="pt")))
    if videos:
        video_config = Qwen2VLVideoConfig.from_pretrained(path)
        pixels, grids = zip(*(preprocess_video(v, video_config) for v in videos), strict=True)
        inputs["pixel_values_videos"] = torch.cat(pixels)
        inputs["video_grid_thw"] = torch.tensor([list(g) for g in grids])
    ids = inputs["input_ids"][0]
    types = torch.zeros_like(ids)
    types[ids == config.image_token_id] = 1
    types[ids == config.video_token_id] = 2
    inputs["mm_token_type_ids"] = types[None]
    return inputs
