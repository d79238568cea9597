"""Qwen2-VL / Qwen2.5-VL video preprocessing with Pillow and torch.

transformers' `Qwen2VLVideoProcessor` needs torchvision; this is the same computation: resize
each frame to the `smart_resize` grid (Pillow, bicubic, as the PIL image processor does),
rescale, normalize, then cut [T, C, H, W] into flattened temporal x spatial patches, padding
the frame count to a multiple of `temporal_patch_size` by repeating the last frame. A video of
N identical frames therefore gives exactly the patches the image processor gives one image.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# NOTE: read in this order; real Qwen2-VL repositories ship only preprocessor_config.json
_CONFIG_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


@dataclass(frozen=True, slots=True)
class Qwen2VLVideoConfig:
    """The video processor's settings; defaults are `Qwen2VLVideoProcessor`'s."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    fps: float | None = None  # the processor's default sampling rate, when it has one

    @property
    def factor(self) -> int:
        """Height and width of the resized frames are multiples of this."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Qwen2VLVideoConfig:
        """From a saved processor config: `size` {shortest_edge, longest_edge} or min/max_pixels."""
        values = dict(values)
        size = values.pop("size", None) or {}
        values.setdefault("min_pixels", size.get("shortest_edge", cls.min_pixels))
        values.setdefault("max_pixels", size.get("longest_edge", cls.max_pixels))
        for key in ("image_mean", "image_std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if not values.get("do_sample_frames", True):
            values["fps"] = None
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Qwen2VLVideoConfig:
        """From a checkpoint folder: the video processor's config, else the image processor's."""
        folder = Path(path)
        for name in _CONFIG_FILES:
            if (folder / name).is_file():
                return cls.from_dict(json.loads((folder / name).read_text()))
        processor = folder / "processor_config.json"
        if processor.is_file():
            nested = json.loads(processor.read_text())
            return cls.from_dict(nested.get("video_processor") or nested.get("image_processor", {}))
        return cls()


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, pixels within [min, max], aspect kept.

    The same arithmetic as transformers' Qwen2-VL `smart_resize`. Raises ValueError when the
    aspect ratio is over 200.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def preprocess_video(
    frames: np.ndarray, config: Qwen2VLVideoConfig
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[T, H, W, 3] uint8 frames -> (pixel_values, grid_thw).

    pixel_values: [grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2] float32.
    grid_thw: (grid_t, grid_h, grid_w) in patches, before the spatial merge.
    """
    frames = resize_frames(frames, config)  # [T, h, w, 3] uint8
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, h, w]
    video = rescale_and_normalize(video, config)
    return patchify(video, config)


def resize_frames(frames: np.ndarray, config: Qwen2VLVideoConfig) -> np.ndarray:
    """Each frame to the `smart_resize` grid with Pillow, like the PIL image processor."""
    height, width = frames.shape[1:3]
    if not config.do_resize:
        return frames
    new_height, new_width = smart_resize(
        height, width, config.factor, config.min_pixels, config.max_pixels
    )
    if (new_height, new_width) == (height, width):
        return frames
    resample = Image.Resampling(config.resample)
    resized = [
        np.asarray(Image.fromarray(frame).resize((new_width, new_height), resample))
        for frame in frames
    ]
    return np.stack(resized)


def rescale_and_normalize(video: torch.Tensor, config: Qwen2VLVideoConfig) -> torch.Tensor:
    """[T, C, H, W] uint8 -> float32, with the image processor's rounding (float64 rescale,
    float32 normalize)."""
    pixels = video.to(torch.float32)
    if config.do_rescale:
        pixels = (video.to(torch.float64) * config.rescale_factor).to(torch.float32)
    if config.do_normalize:
        mean = torch.tensor(config.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        pixels = (pixels - mean) / std
    return pixels


def patchify(
    video: torch.Tensor, config: Qwen2VLVideoConfig
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[T, C, H, W] -> ([grid_t * grid_h * grid_w, C * tps * ps * ps], (grid_t, grid_h, grid_w)).

    Patches are ordered as the vision tower expects: by time, then by merge window (row-major),
    then row-major inside each window.
    """
    ps, tps, merge = config.patch_size, config.temporal_patch_size, config.merge_size
    if pad := -video.shape[0] % tps:  # NOTE: repeat the last frame, as HF does
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    num_frames, channels, height, width = video.shape
    grid_t, grid_h, grid_w = num_frames // tps, height // ps, width // ps
    patches = video.reshape(
        grid_t, tps, channels, grid_h // merge, merge, ps, grid_w // merge, merge, ps
    )
    # -> [grid_t, gh/m, gw/m, m, m, C, tps, ps, ps]
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * tps * ps * ps)
    return flat.contiguous(), (grid_t, grid_h, grid_w)
