"""Encoder.encode: caching, deduplication, options, precomputed "E" inputs, errors, info."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoder_service import Encoder, MediaError
from protos.encoder_messages import MediaItem
from protos.errors import InvalidRequest
from tests.encoder_service.samples import encode_image, make_video, random_frames


def _png(seed: int, size: int = 32) -> bytes:
    return encode_image(Image.fromarray(random_frames(1, size, size, seed=seed)[0]), "PNG")


@pytest.fixture
def llava(llava_path: Path):
    with Encoder.from_pretrained(llava_path, "image", max_wait_s=0.0) as encoder:
        yield encoder


def test_the_same_image_twice_runs_the_tower_once(llava: Encoder) -> None:
    (first,) = llava.encode([MediaItem(data=_png(1))])
    (second,) = llava.encode([MediaItem(data=_png(1))])
    assert not first.cache_hit and second.cache_hit
    assert first.content_hash == second.content_hash
    assert torch.equal(first.embeddings, second.embeddings)
    info = llava.info()
    assert info.num_encoded == 1 and info.num_tower_calls == 1 and info.num_requests == 2
    assert (info.cache.hits, info.cache.misses) == (1, 1)


def test_repeats_inside_one_call_are_encoded_once_and_misses_batched(llava: Encoder) -> None:
    out = llava.encode([MediaItem(data=_png(s)) for s in (1, 2, 1, 3, 2)])
    assert [o.content_hash for o in out][2] == out[0].content_hash
    assert torch.equal(out[2].embeddings, out[0].embeddings)
    info = llava.info()
    assert info.num_encoded == 3 and info.num_tower_calls == 1 and info.num_items == 5


def test_decoded_and_file_inputs_give_the_same_embeddings(llava: Encoder) -> None:
    frame = random_frames(1, 32, 32, seed=4)[0]
    from_file, from_pil, from_array = llava.encode(
        [
            MediaItem(data=encode_image(Image.fromarray(frame), "PNG")),
            MediaItem(decoded=Image.fromarray(frame)),
            MediaItem(decoded=frame),
        ]
    )
    torch.testing.assert_close(from_pil.embeddings, from_file.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(from_array.embeddings, from_file.embeddings, rtol=0, atol=0)
    assert len({from_file.content_hash, from_pil.content_hash, from_array.content_hash}) == 3


def test_video_options_are_part_of_the_cache_key(qwen2_vl_path: Path) -> None:
    data = make_video(random_frames(20, 56, 56), fps=10)
    with Encoder.from_pretrained(qwen2_vl_path, "video", max_wait_s=0.0) as encoder:
        default, explicit, other = encoder.encode(
            [
                MediaItem(data=data),  # the default is 2 fps
                MediaItem(data=data, options={"fps": 2}),
                MediaItem(data=data, options={"fps": 1.0}),
            ]
        )
        assert default.content_hash == explicit.content_hash != other.content_hash
        assert other.metadata["grid_thw"] == (1, 4, 4) and default.metadata["grid_thw"] == (2, 4, 4)
        assert encoder.info().num_encoded == 2
        (again,) = encoder.encode([MediaItem(data=data, options={"fps": 1.0})])
        assert again.cache_hit and encoder.info().num_encoded == 2


def test_the_byte_budget_evicts_least_recently_used(llava_path: Path) -> None:
    entry_bytes = 16 * 64 * 4  # 16 tokens x hidden 64 x float32
    with Encoder.from_pretrained(llava_path, "image", cache_bytes=2 * entry_bytes) as encoder:
        for seed in (1, 2, 3):  # 1 is evicted by 3
            encoder.encode([MediaItem(data=_png(seed))])
        (three,) = encoder.encode([MediaItem(data=_png(3))])
        (one,) = encoder.encode([MediaItem(data=_png(1))])
        info = encoder.info()
    assert three.cache_hit and not one.cache_hit
    assert info.num_encoded == 4 and info.cache.evictions == 2
    assert info.cache.num_bytes == 2 * entry_bytes


def test_a_bad_item_names_its_index_and_runs_nothing(llava: Encoder) -> None:
    with pytest.raises(MediaError, match=r"^image 1: not a decodable image") as info:
        llava.encode([MediaItem(data=_png(1)), MediaItem(data=b"\x89PNG broken")])
    assert info.value.index == 1 and isinstance(info.value, InvalidRequest)
    assert llava.info().num_encoded == 0


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (MediaItem(), "needs exactly one of data, embeddings or decoded"),
        (MediaItem(data=b"x", decoded=np.zeros((2, 2, 3), np.uint8)), "needs exactly one"),
        (MediaItem(data="not bytes"), "unsupported input of type str"),
        (MediaItem(decoded=object()), "unsupported input of type object"),
        (
            MediaItem(data=b"x", options={"fps": 2}),
            r"unknown option\(s\) \['fps'\]; image takes no",
        ),
    ],
)
def test_malformed_items_are_refused(llava: Encoder, item: MediaItem, message: str) -> None:
    with pytest.raises(MediaError, match=rf"^image 0: {message}"):
        llava.encode([item])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fps": 1, "num_frames": 4}, "pass either fps or num_frames"),
        ({"fps": -1.0}, "fps must be a number > 0"),
        ({"fps": float("nan")}, "fps must be a number > 0"),
        ({"num_frames": 2.5}, "num_frames must be an int >= 1"),
        ({"num_frames": True}, "num_frames must be an int >= 1"),
        ({"fsp": 2}, r"unknown option\(s\) \['fsp'\]; video takes fps, num_frames"),
    ],
)
def test_bad_video_options_are_refused(
    qwen2_vl_video_encoder: Encoder, options: dict, message: str
) -> None:
    item = MediaItem(decoded=random_frames(2, 56, 56), options=options)
    with pytest.raises(MediaError, match=rf"^video 0: {message}"):
        qwen2_vl_video_encoder.encode([item])


# -------------------------------------------------------------------------- precomputed embeddings


def test_precomputed_embeddings_pass_through_cast_and_hashed(llava_path: Path) -> None:
    embeddings = torch.randn(16, 64, dtype=torch.float64)  # the tiny LLaVA's 16 rows per image
    with Encoder.from_pretrained(llava_path, "image", dtype="bfloat16") as encoder:
        first, second = encoder.encode(
            [MediaItem(embeddings=embeddings), MediaItem(embeddings=embeddings.numpy())]
        )
        assert encoder.info().num_encoded == 0
    assert first.embeddings.dtype == torch.bfloat16 and first.num_tokens == 16
    torch.testing.assert_close(first.embeddings, embeddings.to(torch.bfloat16), rtol=0, atol=0)
    assert first.content_hash == second.content_hash and not first.cache_hit
    other = embeddings.clone()
    other[0, 0] += 1
    with Encoder.from_pretrained(llava_path, "image", dtype="bfloat16") as encoder:
        assert encoder.encode([MediaItem(embeddings=other)])[0].content_hash != first.content_hash


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (torch.zeros(64), r"must be 2-D \[num_tokens, hidden\], got shape \(64,\)"),
        (torch.zeros(4, 32), "have width 32, but the language model's hidden size is 64"),
        (torch.zeros(4, 64, dtype=torch.int64), "must be floating point, got torch.int64"),
        (torch.zeros(0, 64), "have no tokens"),
        (torch.full((2, 64), float("nan")), "contain NaN or infinity"),
        ([[0.0] * 64], "must be a tensor"),
        (torch.zeros(4, 64), "have 4 rows, but LlavaForConditionalGeneration takes 16 per image"),
    ],
)
def test_bad_precomputed_embeddings_name_the_item(llava: Encoder, embeddings, message: str) -> None:
    items = [MediaItem(embeddings=torch.zeros(16, 64)), MediaItem(embeddings=embeddings)]
    with pytest.raises(MediaError, match=rf"^image 1: precomputed embeddings {message}"):
        llava.encode(items)


def test_qwen2_vl_embeddings_need_a_consistent_grid(qwen2_vl_image_encoder: Encoder) -> None:
    embeddings = torch.randn(6, 64)
    (out,) = qwen2_vl_image_encoder.encode(
        [MediaItem(embeddings=embeddings, metadata={"grid_thw": [1, np.int64(4), 6]})]
    )
    assert out.metadata["grid_thw"] == (1, 4, 6) and out.num_tokens == 6
    with pytest.raises(
        MediaError, match=r"^image 0: precomputed embeddings need metadata grid_thw"
    ):
        qwen2_vl_image_encoder.encode([MediaItem(embeddings=embeddings)])
    with pytest.raises(MediaError, match=r"^image 0: grid_thw \(1, 4, 4\) implies 4 tokens"):
        qwen2_vl_image_encoder.encode(
            [MediaItem(embeddings=embeddings, metadata={"grid_thw": (1, 4, 4)})]
        )


def test_processor_refusals_become_media_errors(qwen2_vl_image_encoder: Encoder) -> None:
    sliver = np.zeros((2, 500, 3), np.uint8)  # aspect ratio 250: smart_resize refuses it
    with pytest.raises(
        MediaError, match=r"^image 0: absolute aspect ratio must be smaller than 200"
    ):
        qwen2_vl_image_encoder.encode([MediaItem(decoded=sliver)])


def test_image_and_video_encoders_can_share_one_tower(
    qwen2_vl_image_encoder: Encoder, qwen2_vl_path: Path
) -> None:
    from protos.errors import Unsupported

    tower = qwen2_vl_image_encoder.tower
    with Encoder.from_pretrained(qwen2_vl_path, "video", tower=tower) as videos:
        assert videos.tower is tower
        (out,) = videos.encode([MediaItem(decoded=random_frames(2, 56, 56))])
        assert out.metadata["grid_thw"] == (1, 4, 4)
    with pytest.raises(Unsupported, match="audio is not supported"):
        Encoder.from_pretrained(qwen2_vl_path, "audio", tower=tower)


def test_cached_embeddings_do_not_keep_the_padded_batch_alive(
    qwen2_audio_encoder: Encoder,
) -> None:
    waves = [(np.zeros(n, np.float32), 16_000) for n in (4_000, 16_000)]
    for out in qwen2_audio_encoder.encode([MediaItem(decoded=wave) for wave in waves]):
        embeddings = out.embeddings
        assert embeddings.is_contiguous()
        assert embeddings.untyped_storage().nbytes() == embeddings.numel() * 4


def test_info_describes_the_encoder(qwen2_audio_path: Path) -> None:
    with Encoder.from_pretrained(qwen2_audio_path, "audio", model_id="tiny-audio") as encoder:
        info = encoder.info()
    assert info.architecture == "Qwen2AudioForConditionalGeneration"
    assert (info.modality, info.hidden_size, info.dtype, info.device) == (
        "audio",
        64,
        "float32",
        "cpu",
    )
    assert info.model_id == "tiny-audio|float32" and info.cache.max_bytes == 256 << 20
    assert info._asdict()["num_requests"] == 0
