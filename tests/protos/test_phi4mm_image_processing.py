"""Our torch-only Phi-4-multimodal image processor against references computed by hand from
HF's formulas (HF's own class needs torchvision, which cannot load here), and the processor
`load_processor` builds with it: its image token count is what HF's model consumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gateway.tools.tiny_models import tiny_model_path
from protos.hf_processor import load_processor
from protos.phi4mm_image_processing import (
    Phi4MultimodalImageProcessorTorch,
    crop_grid,
    fit_size,
)

CROP = 448


def _processor(dynamic_hd: int = 4) -> Phi4MultimodalImageProcessorTorch:
    size = {"height": CROP, "width": CROP}
    return Phi4MultimodalImageProcessorTorch(size=size, patch_size=14, dynamic_hd=dynamic_hd)


def test_crop_grid_follows_hf_dynamic_hd() -> None:
    assert crop_grid(500, 300, CROP, 4) == (2, 1)  # ceil(500/448) x ceil(300/448) fits
    assert crop_grid(32, 32, CROP, 4) == (1, 1)
    # 5 x 1 crops > 4: the allowed ratio closest to 20:1 is 4:1
    assert crop_grid(2000, 100, CROP, 4) == (4, 1)
    # 3 x 3 > 4: closest to 1:1 among (1,1) and (2,2); the later tie wins for a big image
    assert crop_grid(1000, 1000, CROP, 4) == (2, 2)


def test_fit_size_keeps_the_aspect_ratio() -> None:
    # width ratio 896/500 > height ratio 448/300: height fills, width = int(500 * 448/300)
    assert fit_size(500, 300, (2, 1), CROP) == (746, 448)
    assert fit_size(300, 500, (1, 2), CROP) == (448, 746)


def test_a_wide_image_gives_hf_shapes_masks_and_token_count() -> None:
    """500 x 300 -> 2 x 1 crops of 448, 746 px of image + 150 px of white padding: the last
    floor(150 / 14) = 10 patch columns are masked; downsampled 2x, 5 of 32 columns go, so
    the count is 256 + 1 + 16 * 27 + 16 + 16 = 721."""
    image = Image.new("RGB", (500, 300), (255, 0, 51))
    out = _processor()([image], return_tensors="pt")
    assert out["image_pixel_values"].shape == (1, 3, 3, CROP, CROP)  # global + 2 crops
    assert out["image_sizes"].tolist() == [[448, 896]]
    assert out["num_img_tokens"].tolist() == [721]
    mask = out["image_attention_mask"]  # [1, 3, 32, 32]
    assert mask.shape == (1, 3, 32, 32)
    assert mask[0, :2].all() and mask[0, 2, :, :22].all()
    assert not mask[0, 2, :, 22:].any()
    pixels = out["image_pixel_values"][0]
    # a flat color survives resizing; (x - 127.5) / 127.5 per channel; padding is white
    torch.testing.assert_close(pixels[1, :, 0, 0], torch.tensor([1.0, -1.0, -0.6]))
    assert (pixels[2, :, :, 746 - CROP :] == 1.0).all()


def test_images_with_fewer_crops_are_padded_like_hf() -> None:
    """A batch pads to the most crops: pixels with zeros, masks with ones."""
    small, wide = Image.new("RGB", (32, 32)), Image.new("RGB", (500, 300))
    out = _processor()([small, wide], return_tensors="pt")
    assert out["image_pixel_values"].shape == (2, 3, 3, CROP, CROP)
    assert out["num_img_tokens"].tolist() == [256 + 1 + 256 + 16 + 16, 721]
    assert (out["image_pixel_values"][0, 2] == 0).all()
    assert out["image_attention_mask"][0, 2].all()


def test_it_saves_as_hf_class_with_hf_keys() -> None:
    saved = _processor().to_dict()
    assert saved["image_processor_type"] == "Phi4MultimodalImageProcessor"
    assert "crop" not in saved and saved["size"] == {"height": CROP, "width": CROP}


def test_an_extreme_aspect_ratio_is_refused() -> None:
    with pytest.raises(ValueError, match="aspect ratio is very extreme"):
        _processor(dynamic_hd=1)([Image.new("RGB", (4000, 40))])


def test_load_processor_builds_hf_processor_with_ours() -> None:
    """The checkpoint's Phi4MultimodalProcessor, HF's audio feature extractor, our images;
    HF's model takes the result (its scatter fails if the image token count is off)."""
    from transformers import Phi4MultimodalForCausalLM

    path = tiny_model_path("phi4mm")
    processor = load_processor(path)
    assert type(processor).__name__ == "Phi4MultimodalProcessor"
    assert isinstance(processor.image_processor, Phi4MultimodalImageProcessorTorch)
    image = Image.new("RGB", (500, 300), (10, 200, 30))
    audio = np.sin(np.arange(8000, dtype=np.float32) / 7.0) * 0.1
    inputs = processor(
        text="<|image|><|audio|>What is it?",
        images=[image],
        audio=[audio],
        sampling_rate=16000,
        return_tensors="pt",
    )
    ids = inputs["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 721
    assert int((ids == processor.audio_token_id).sum()) == int(inputs["audio_embed_sizes"][0])
    with torch.inference_mode():
        logits = (
            Phi4MultimodalForCausalLM.from_pretrained(path).eval()(**inputs).logits
        )  # [1, L, vocab]
    assert logits.shape[1] == ids.shape[0] and torch.isfinite(logits).all()
