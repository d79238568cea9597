"""The checkpoint's HF processor without torchvision: its video processor's pixel operations
by Pillow and torch, equal to the PIL image backend's frame by frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gateway.tools.tiny_models import tiny_model_path
from protos.errors import Unsupported
from protos.hf_processor import load_processor


def _frames(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, height, width, 3), dtype=np.uint8)


def _per_frame(frames: np.ndarray, **settings: object) -> torch.Tensor:
    """The PIL image backend on each frame: what the video processor must give."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(**settings)
    return processor(images=list(frames), return_tensors="pt")["pixel_values"]  # [T, C, H, W]


@pytest.mark.parametrize(
    ("model", "settings"),
    [
        # shortest edge to 32, then a 32 x 32 center crop
        ("llava_next_video", {"size": {"shortest_edge": 32}, "crop_size": 32}),
        # straight to 32 x 32, no crop, mean/std 0.5
        (
            "llava_onevision",
            {
                "size": {"height": 32, "width": 32},
                "do_center_crop": False,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            },
        ),
    ],
)
def test_video_processor_matches_the_pil_image_backend(model: str, settings: dict) -> None:
    processor = load_processor(tiny_model_path(model))
    assert type(processor.video_processor).__name__.endswith("VideoProcessor")
    frames = _frames(40, 48)  # resized and cropped
    out, replacements = processor._process_videos([frames], return_tensors="pt")
    videos = out["pixel_values_videos"]  # [1, T, C, H, W]
    assert videos.shape == (1, 4, 3, 32, 32)
    # NOTE: the video path fuses rescale into normalize ((x - 255 mean) / 255 std), as
    # torchvision's backend does; the image backend rescales first: float32 rounding apart.
    torch.testing.assert_close(videos[0], _per_frame(frames, **settings), atol=1e-5, rtol=0)
    assert replacements[0].count(processor.video_token) > 0


def test_frames_of_the_target_size_are_only_rescaled_and_normalized() -> None:
    processor = load_processor(tiny_model_path("llava_next_video"))
    frames = _frames(32, 32)
    videos = processor._process_videos([frames], return_tensors="pt")[0]["pixel_values_videos"]
    config = processor.video_processor
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(config.image_std).view(1, 3, 1, 1) * 255
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(videos[0], (pixels - mean) / std, atol=0, rtol=0)


def test_a_video_processor_whose_module_needs_torchvision_refuses_videos() -> None:
    """InternVL's video module imports torchvision itself: images still work, videos say why."""
    processor = load_processor(tiny_model_path("internvl"))
    assert processor.image_token == "<IMG_CONTEXT>"
    with pytest.raises(Unsupported, match="torchvision"):
        processor._process_videos([_frames(32, 32)], return_tensors="pt")


def test_a_processor_without_video_is_hf_own() -> None:
    from transformers import LlavaNextProcessor

    assert type(load_processor(tiny_model_path("llava_next"))) is LlavaNextProcessor
