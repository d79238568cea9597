"""Our Qwen2-VL video preprocessing against transformers' image and video processors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoder_service.towers.qwen2_vl_processing import (
    Qwen2VLVideoConfig,
    patchify,
    preprocess_video,
    smart_resize,
)
from protos.hf_processor import load_processor
from tests.encoder_service.samples import random_frames


@pytest.fixture(scope="module")
def video_config(qwen2_vl_path: Path) -> Qwen2VLVideoConfig:
    return Qwen2VLVideoConfig.from_pretrained(qwen2_vl_path)


@pytest.fixture(scope="module")
def image_processor(qwen2_vl_path: Path):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(qwen2_vl_path, backend="pil")


def test_config_comes_from_the_video_preprocessor_file(
    video_config: Qwen2VLVideoConfig, qwen2_vl_path: Path
) -> None:
    saved = json.loads((qwen2_vl_path / "video_preprocessor_config.json").read_text())
    assert video_config.min_pixels == saved["size"]["shortest_edge"]
    assert video_config.max_pixels == saved["size"]["longest_edge"]
    assert (video_config.patch_size, video_config.merge_size) == (14, 2)
    assert video_config.temporal_patch_size == 2 and video_config.fps is None


def test_config_falls_back_to_the_image_processor_file(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 3136, "max_pixels": 12845056, "temporal_patch_size": 2})
    )
    config = Qwen2VLVideoConfig.from_pretrained(tmp_path)
    assert (config.min_pixels, config.max_pixels) == (3136, 12845056)


@pytest.mark.parametrize(
    ("height", "width"), [(56, 84), (70, 90), (1000, 30), (10, 10), (4000, 3000)]
)
def test_smart_resize_equals_hf(height: int, width: int) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        smart_resize as hf_smart_resize,
    )

    ours = smart_resize(height, width, 28, 56 * 56, 28 * 28 * 1280)
    assert ours == hf_smart_resize(height, width, 28, 56 * 56, 28 * 28 * 1280)
    assert ours[0] % 28 == 0 and ours[1] % 28 == 0


def test_smart_resize_refuses_extreme_aspect_ratios() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4])
@pytest.mark.parametrize(("height", "width"), [(56, 84), (70, 90), (112, 112)])
def test_identical_frames_give_the_image_processor_patches(
    video_config: Qwen2VLVideoConfig, image_processor, num_frames: int, height: int, width: int
) -> None:
    """HF's image processor repeats an image temporal_patch_size times; a video of N copies of
    it gives the same patches once per temporal grid step (70x90 exercises the resize)."""
    frame = random_frames(1, height, width, seed=height)[0]
    expected = image_processor(images=[Image.fromarray(frame)], return_tensors="pt")
    pixel_values, grid = preprocess_video(np.stack([frame] * num_frames), video_config)
    grid_t = math.ceil(num_frames / 2)
    assert grid == (grid_t, *expected["image_grid_thw"][0, 1:].tolist())
    assert pixel_values.shape == (grid_t * expected["pixel_values"].shape[0], 3 * 2 * 14 * 14)
    torch.testing.assert_close(
        pixel_values, expected["pixel_values"].repeat(grid_t, 1), rtol=0, atol=0
    )


def test_frame_count_is_padded_by_repeating_the_last_frame(
    video_config: Qwen2VLVideoConfig,
) -> None:
    frames = random_frames(3, 56, 56)
    padded = np.concatenate([frames, frames[-1:]])
    odd, grid = preprocess_video(frames, video_config)
    even, grid_even = preprocess_video(padded, video_config)
    assert grid == grid_even == (2, 4, 4)
    torch.testing.assert_close(odd, even, rtol=0, atol=0)


def test_patch_layout_is_time_then_merge_window_then_row_major() -> None:
    """Each flattened patch holds [C, tps, ps, ps] of one (t, row, col) patch; patches come in
    2x2 merge windows so the merger sees neighbours together."""
    config = Qwen2VLVideoConfig(patch_size=2, temporal_patch_size=2, merge_size=2)
    t, c, h, w = 4, 3, 8, 8
    video = torch.arange(t * c * h * w, dtype=torch.float32).reshape(t, c, h, w)
    patches, grid = patchify(video, config)
    assert grid == (2, 4, 4) and patches.shape == (32, c * 2 * 2 * 2)
    order = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 0, 2)]  # (t, patch row, patch col)
    for position, (gt, row, col) in enumerate(order):
        block = video[gt * 2 : gt * 2 + 2, :, row * 2 : row * 2 + 2, col * 2 : col * 2 + 2]
        torch.testing.assert_close(patches[position], block.permute(1, 0, 2, 3).reshape(-1))


@pytest.mark.parametrize("num_frames", [2, 5])
def test_equals_hf_video_processor(
    qwen2_vl_path: Path, video_config: Qwen2VLVideoConfig, num_frames: int
) -> None:
    """HF's Qwen2VLVideoProcessor class (torchvision's, or without it the same class on
    Pillow / torch ops: protos.hf_processor) gives our port's patches and grid."""
    processor = load_processor(qwen2_vl_path).video_processor
    frames = random_frames(num_frames, 56, 84, seed=num_frames)  # already on the grid: no resize
    expected = processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
    pixel_values, grid = preprocess_video(frames, video_config)
    assert grid == tuple(expected["video_grid_thw"][0].tolist())
    torch.testing.assert_close(pixel_values, expected["pixel_values_videos"], rtol=0, atol=1e-6)
