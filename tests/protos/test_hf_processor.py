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


def test_a_video_module_importing_torchvision_for_its_annotations_runs_its_own_class() -> None:
    """InternVL's and Qwen2-VL's video modules import torchvision's functional module only to
    name it in annotations: their own classes run (Qwen2-VL's smart resize, patchify) on
    Pillow / torch ops; a real use of it says why, and nobody else sees the stand-in."""
    import importlib

    from encoder_service.towers.qwen2_vl_processing import Qwen2VLVideoConfig, preprocess_video

    path = tiny_model_path("qwen2_vl")
    processor = load_processor(path)
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    frames = _frames(56, 84)  # already on the 28-pixel grid: no resize
    out = processor(
        text="<|video_pad|>", videos=[frames], do_sample_frames=False, return_tensors="pt"
    )
    pixels, grid = preprocess_video(frames, Qwen2VLVideoConfig.from_pretrained(path))
    assert tuple(out["video_grid_thw"][0].tolist()) == grid
    torch.testing.assert_close(out["pixel_values_videos"], pixels, rtol=0, atol=1e-6)
    internvl = load_processor(tiny_model_path("internvl"))
    videos, replacements = internvl._process_videos([_frames(32, 32)], return_tensors="pt")
    assert videos["pixel_values_videos"].shape == (1, 4, 3, 32, 32) and replacements
    module = importlib.import_module("transformers.models.qwen2_vl.video_processing_qwen2_vl")
    with pytest.raises(Unsupported, match="needs torchvision"):
        module.tvF.resize  # noqa: B018 - the attribute access is the use
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401


def test_the_torchvision_stand_in_answers_introspection_with_attribute_error() -> None:
    """hasattr, getattr with a default and get_type_hints must not see the refusal."""
    import typing

    from protos.hf_processor import _TorchvisionStandIn

    stand_in = _TorchvisionStandIn("torchvision.transforms.v2.functional")
    assert not hasattr(stand_in, "_is_protocol") and not hasattr(stand_in, "__wrapped__")
    assert getattr(stand_in, "_private", None) is None

    def annotated(x: tvF) -> None: ...  # noqa: F821 - a string annotation (future import)

    assert typing.get_type_hints(annotated, localns={"tvF": stand_in}) == {
        "x": stand_in,
        "return": type(None),
    }
    with pytest.raises(Unsupported, match="needs torchvision"):
        stand_in.resize  # noqa: B018 - a real use still says why


def test_a_processor_without_video_is_hf_own() -> None:
    from transformers import LlavaNextProcessor

    assert type(load_processor(tiny_model_path("llava_next"))) is LlavaNextProcessor
