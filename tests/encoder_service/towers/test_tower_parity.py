"""Our embeddings equal the HF model's own feature path, and token counts equal what the HF
processors expand placeholders to (tiny random models, float32, atol 1e-5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from encoder_service import Encoder
from encoder_service.towers import Qwen2AudioTower
from protos.encoder_messages import MediaItem
from tests.encoder_service.samples import encode_image, make_video, random_frames, tone

ATOL = 1e-5
# NOTE: loosened for Qwen2-VL's image and video paths only. Our patch embedding is a matmul
# (encoder_service/towers/patch_projection.py) where HF runs a Conv3d: the same 1176 products
# per channel summed in another order. fp32 rounding of that carries through the blocks and
# the merger to up to 2.3e-5 here (measured); a wrong weight or layout is off by O(1).
ATOL_PATCH_MATMUL = 1e-4


def _png(frame: np.ndarray) -> bytes:
    return encode_image(Image.fromarray(frame), "PNG")


def _capture_inputs_embeds(language_model: torch.nn.Module, run: Any) -> torch.Tensor:
    """The inputs_embeds the HF model hands its language model (media already merged in)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured["inputs_embeds"] = kwargs["inputs_embeds"]

    handle = language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return captured["inputs_embeds"]


# ------------------------------------------------------------------------------------------ LLaVA


def test_llava_equals_the_embeddings_hf_merges_into_the_prompt(
    llava_path: Path, llava_encoder: Encoder
) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(llava_path).eval()
    processor = AutoProcessor.from_pretrained(llava_path)
    images = [Image.fromarray(random_frames(1, 32, 32, seed=s)[0]) for s in range(3)]
    inputs = processor(text=["<image> a <image> b <image>"], images=images, return_tensors="pt")
    merged = _capture_inputs_embeds(model.model.language_model, lambda: model.model(**inputs))
    image_positions = inputs["input_ids"][0] == model.config.image_token_id
    out = llava_encoder.encode([MediaItem(data=encode_image(image, "PNG")) for image in images])
    assert [item.num_tokens for item in out] == [16, 16, 16]  # what the processor expanded
    assert int(image_positions.sum()) == sum(item.num_tokens for item in out)
    ours = torch.cat([item.embeddings for item in out])
    torch.testing.assert_close(ours, merged[0][image_positions], rtol=0, atol=ATOL)
    assert ours.dtype == torch.float32 and ours.shape[1] == model.config.text_config.hidden_size


def test_llava_feature_layer_list_and_full_strategy(llava_variant_path: Path) -> None:
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(llava_variant_path).eval()
    processor = AutoImageProcessor.from_pretrained(llava_variant_path, backend="pil")
    frames = random_frames(2, 32, 32, seed=5)
    pixel_values = processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=pixel_values["pixel_values"]).pooler_output
    with Encoder.from_pretrained(llava_variant_path, "image") as encoder:
        out = encoder.encode([MediaItem(data=_png(frame)) for frame in frames])
    assert [item.num_tokens for item in out] == [17, 17]  # 16 patches + CLS ("full")
    for item, reference in zip(out, expected, strict=True):
        torch.testing.assert_close(item.embeddings, reference, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------------------- Qwen2-VL


@pytest.fixture(scope="module")
def qwen2_vl_model(qwen2_vl_path: Path):
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(qwen2_vl_path).eval()


def test_qwen2_vl_images_equal_get_image_features(
    qwen2_vl_path: Path, qwen2_vl_model, qwen2_vl_image_encoder: Encoder
) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(qwen2_vl_path, backend="pil")
    # 56x84 is on the grid; 70x90 is resized (both sides use Pillow bicubic)
    frames = [random_frames(1, 56, 84, seed=1)[0], random_frames(1, 70, 90, seed=2)[0]]
    inputs = processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")
    with torch.no_grad():
        expected = qwen2_vl_model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]
        ).pooler_output
    out = qwen2_vl_image_encoder.encode([MediaItem(data=_png(frame)) for frame in frames])
    for item, grid, reference in zip(out, inputs["image_grid_thw"], expected, strict=True):
        assert item.metadata["grid_thw"] == tuple(grid.tolist())
        assert item.num_tokens == int(grid.prod()) // 4  # <|image_pad|> tokens HF expands
        torch.testing.assert_close(item.embeddings, reference, rtol=0, atol=ATOL_PATCH_MATMUL)


def _image_patches_as_video(qwen2_vl_path: Path, frame: np.ndarray, grid_t: int):
    """HF's own patches for a video of identical frames: the image processor's patches of
    the frame, repeated once per temporal step."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(qwen2_vl_path, backend="pil")
    image = processor(images=[Image.fromarray(frame)], return_tensors="pt")
    grid = image["image_grid_thw"].clone()
    grid[0, 0] = grid_t
    return image["pixel_values"].repeat(grid_t, 1), grid


@pytest.mark.parametrize("num_frames", [2, 3, 4])
def test_qwen2_vl_video_equals_get_video_features(
    qwen2_vl_path: Path, qwen2_vl_model, qwen2_vl_video_encoder: Encoder, num_frames: int
) -> None:
    frame = random_frames(1, 56, 84, seed=3)[0]
    pixel_values, grid = _image_patches_as_video(qwen2_vl_path, frame, (num_frames + 1) // 2)
    with torch.no_grad():
        expected = qwen2_vl_model.model.get_video_features(
            pixel_values_videos=pixel_values, video_grid_thw=grid
        ).pooler_output[0]
    item = MediaItem(decoded=np.stack([frame] * num_frames), options={"num_frames": num_frames})
    (out,) = qwen2_vl_video_encoder.encode([item])
    assert out.metadata["grid_thw"] == tuple(grid[0].tolist())
    assert out.num_tokens == int(grid.prod()) // 4
    torch.testing.assert_close(out.embeddings, expected, rtol=0, atol=ATOL_PATCH_MATMUL)


def test_qwen2_vl_mp4_video_tokens_follow_the_sampled_frames(
    qwen2_vl_video_encoder: Encoder,
) -> None:
    data = make_video(random_frames(20, 56, 56), fps=10)  # 2 s
    two_fps, four_frames, eight_frames = qwen2_vl_video_encoder.encode(
        [
            MediaItem(data=data, options={"fps": 2.0}),
            MediaItem(data=data, options={"num_frames": 4}),
            MediaItem(data=data, options={"num_frames": 8}),
        ]
    )
    assert two_fps.metadata["grid_thw"] == four_frames.metadata["grid_thw"] == (2, 4, 4)
    assert two_fps.content_hash != four_frames.content_hash  # options are part of the hash
    torch.testing.assert_close(two_fps.embeddings, four_frames.embeddings)  # same 4 frames
    assert eight_frames.metadata["grid_thw"] == (4, 4, 4) and eight_frames.num_tokens == 16
    assert "second_per_grid_t" not in two_fps.metadata  # Qwen2-VL's M-RoPE has no time scale


def test_qwen2_vl_images_of_one_call_run_in_one_tower_call(
    qwen2_vl_image_encoder: Encoder,
) -> None:
    encoder = qwen2_vl_image_encoder
    before = encoder.info()
    sizes = [(56, 56), (84, 56), (112, 84)]
    frames = [random_frames(1, h, w, seed=10 + i)[0] for i, (h, w) in enumerate(sizes)]
    out = encoder.encode([MediaItem(data=_png(f)) for f in frames])
    assert encoder.info().num_tower_calls - before.num_tower_calls == 1
    assert [item.num_tokens for item in out] == [4, 6, 12]
    for item, frame in zip(out, frames, strict=True):  # concatenated patches, same results
        alone = encoder.tower.forward([encoder.tower.prepare(encoder.modality, frame, 0)])[0]
        torch.testing.assert_close(item.embeddings, alone, rtol=1e-4, atol=ATOL)


# ------------------------------------------------------------------------------------- Qwen2.5-VL


@pytest.mark.seed_row("Qwen2_5_VLForConditionalGeneration", "generate")
def test_qwen2_5_vl_window_attention_tower(qwen2_5_vl_path: Path) -> None:
    from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen2_5_vl_path).eval()
    processor = AutoImageProcessor.from_pretrained(qwen2_5_vl_path, backend="pil")
    frame = random_frames(1, 112, 112, seed=4)[0]  # 8x8 patches: four 2x2-merged windows
    inputs = processor(images=[Image.fromarray(frame)], return_tensors="pt")
    with torch.no_grad():
        expected = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]
        ).pooler_output[0]
    with Encoder.from_pretrained(qwen2_5_vl_path, "image") as images:
        (image,) = images.encode([MediaItem(data=_png(frame))])
    torch.testing.assert_close(image.embeddings, expected, rtol=0, atol=ATOL)

    video = make_video(np.stack([frame] * 20), fps=10)
    with Encoder.from_pretrained(qwen2_5_vl_path, "video") as videos:
        (clip,) = videos.encode([MediaItem(data=video, options={"num_frames": 4})])
    assert clip.metadata["grid_thw"] == (2, 8, 8) and clip.num_tokens == 32
    # 4 of 20 frames at 10 fps: sampled at 2 fps, so a 2-frame temporal patch spans 1 s
    assert clip.metadata["second_per_grid_t"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ Qwen2-Audio


def test_qwen2_audio_equals_the_embeddings_hf_merges_into_the_prompt(
    qwen2_audio_path: Path, qwen2_audio_encoder: Encoder
) -> None:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(qwen2_audio_path).eval()
    processor = AutoProcessor.from_pretrained(qwen2_audio_path)
    waves = [tone(1.0, 16_000, 440), tone(1.3125, 16_000, 220), tone(0.5, 16_000, 300)]
    text = "".join(f"Audio {i}: <|audio_bos|><|AUDIO|><|audio_eos|>\n" for i in range(3))
    inputs = processor(text=[text + "hi"], audio=waves, sampling_rate=16_000, return_tensors="pt")
    merged = _capture_inputs_embeds(model.model.language_model, lambda: model.model(**inputs))
    audio_positions = inputs["input_ids"][0] == model.config.audio_token_id

    out = qwen2_audio_encoder.encode([MediaItem(decoded=(wave, 16_000)) for wave in waves])
    lengths = inputs["feature_attention_mask"].sum(-1).tolist()
    expected_tokens = [Qwen2AudioTower.num_tokens(n) for n in lengths]
    assert expected_tokens == [(((n - 1) // 2 + 1) - 2) // 2 + 1 for n in lengths]
    assert [item.num_tokens for item in out] == expected_tokens == [25, 33, 12]
    assert int(audio_positions.sum()) == sum(expected_tokens)
    ours = torch.cat([item.embeddings for item in out])
    torch.testing.assert_close(ours, merged[0][audio_positions], rtol=0, atol=ATOL)


def test_qwen2_audio_refuses_audio_longer_than_its_window(
    qwen2_audio_encoder: Encoder,
) -> None:
    from encoder_service import MediaLimitExceeded

    long = MediaItem(decoded=(tone(2.5, 16_000), 16_000))
    with pytest.raises(
        MediaLimitExceeded, match=r"^audio 1: lasts 2.50 s; this model encodes at most 2 s"
    ):
        qwen2_audio_encoder.encode([MediaItem(decoded=(tone(1.0, 16_000), 16_000)), long])
