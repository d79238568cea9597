"""Media decoding under limits: formats, conversions, sampling, and typed errors naming items."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import soundfile
from PIL import Image

from encoder_service.errors import MediaError, MediaLimitExceeded
from encoder_service.media import (
    MediaLimits,
    decode_audio,
    decode_image,
    decode_video,
    resample,
    sample_frame_indices,
)
from protos.errors import InvalidRequest, LimitExceeded
from tests.encoder_service.samples import (
    encode_image,
    make_video,
    make_wav,
    random_frames,
    tone,
)

LIMITS = MediaLimits()


def _gradient(width: int = 50, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    return Image.fromarray(np.concatenate(np.broadcast_arrays(x, y, x // 2 + y // 2), axis=2))


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, with a tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip_exactly(fmt: str) -> None:
    image = _gradient()
    decoded = decode_image(encode_image(image, fmt), 0, LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (50, 40)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_decode_close_to_the_source(fmt: str) -> None:
    image = _gradient()
    decoded = np.asarray(decode_image(encode_image(image, fmt, quality=95), 0, LIMITS))
    assert decoded.shape == (40, 50, 3)
    assert np.abs(decoded.astype(int) - np.asarray(image).astype(int)).mean() < 4


def test_gif_gives_its_first_frame() -> None:
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode_image(first, "GIF", save_all=True, append_images=[second], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    decoded = np.asarray(decode_image(data, 0, LIMITS))
    assert tuple(decoded[0, 0]) == (255, 0, 0)


def test_transparent_pixels_become_white_like_hf() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, 0, 3] = 255  # one opaque pixel, the rest fully transparent
    decoded = np.asarray(decode_image(encode_image(Image.fromarray(rgba), "PNG"), 0, LIMITS))
    assert tuple(decoded[0, 0]) == (10, 20, 30)
    assert tuple(decoded[1, 1]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    decoded = decode_image(encode_image(_gradient().convert(mode), fmt), 0, LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (50, 40)


def test_exif_orientation_is_applied_like_hf_load_image() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode_image(_gradient(50, 40), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (50, 40)
    assert decode_image(data, 0, LIMITS).size == (40, 50)


def test_decoded_inputs_are_accepted() -> None:
    image = _gradient()
    array = np.asarray(image)
    np.testing.assert_array_equal(np.asarray(decode_image(image.convert("RGBA"), 0, LIMITS)), array)
    np.testing.assert_array_equal(np.asarray(decode_image(array, 0, LIMITS)), array)
    with pytest.raises(MediaError, match=r"image 2: a decoded image must be a uint8 array"):
        decode_image(array.astype(np.float32), 2, LIMITS)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "is empty"),
        (b"definitely not an image", r"not a decodable image \(cannot identify image file\)"),
        (
            _half(encode_image(Image.fromarray(random_frames(1, 64, 64)[0]), "JPEG")),
            r"not a decodable image \(image file is truncated",
        ),
        (encode_image(_gradient(), "PNG")[:60], "not a decodable image"),
    ],
    ids=["empty", "garbage", "truncated-jpeg", "truncated-png"],
)
def test_bad_images_raise_media_error_naming_the_item(data: bytes, reason: str) -> None:
    with pytest.raises(MediaError, match=rf"^image 3: {reason}") as info:
        decode_image(data, 3, LIMITS)
    assert isinstance(info.value, InvalidRequest) and info.value.index == 3


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_png_header_is_refused_before_decoding() -> None:
    data = _png_header_only(10_000, 10_000)
    assert len(data) < 100
    start = time.perf_counter()
    with pytest.raises(MediaLimitExceeded, match=r"^image 1: is 10000x10000 = 100000000 pixels"):
        decode_image(data, 1, LIMITS)
    assert time.perf_counter() - start < 0.05  # 300 MB of pixels would take far longer


def test_pillow_decompression_bomb_becomes_our_limit_error() -> None:
    # NOTE: our limit above Pillow's own: Pillow refuses at open, still a LimitExceeded.
    with pytest.raises(MediaLimitExceeded, match=r"^image 0: too many pixels") as info:
        decode_image(_png_header_only(20_000, 20_000), 0, MediaLimits(max_pixels=10**9))
    assert isinstance(info.value, LimitExceeded)


def test_too_many_bytes_is_a_limit_error() -> None:
    data = encode_image(_gradient(), "PNG")
    with pytest.raises(MediaLimitExceeded, match=rf"^image 0: is {len(data)} bytes, more than"):
        decode_image(data, 0, MediaLimits(max_bytes=len(data) - 1))


def test_limits_validate_themselves() -> None:
    with pytest.raises(ValueError, match="max_frames"):
        MediaLimits(max_frames=0)


# ------------------------------------------------------------------------------------------ videos


def test_mp4_fps_sampling_matches_hf_uniform_indices() -> None:
    frames = random_frames(20, 48, 64)
    clip = decode_video(make_video(frames, fps=10), 0, LIMITS, fps=2.0)
    assert clip.frames.shape == (4, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.frame_indices == (0, 5, 10, 15)
    assert clip.fps == pytest.approx(10.0) and clip.duration == pytest.approx(2.0)
    assert clip.total_num_frames == 20 and clip.sampled_fps == pytest.approx(2.0)


def test_mp4_num_frames_sampling_keeps_the_chosen_frames() -> None:
    frames = np.stack([np.full((32, 32, 3), 12 * i, np.uint8) for i in range(20)])
    clip = decode_video(make_video(frames, fps=10), 0, LIMITS, num_frames=5)
    assert clip.frame_indices == (0, 4, 8, 12, 16)
    # flat colours survive yuv420p almost exactly: the frames are the chosen ones
    np.testing.assert_allclose(clip.frames[:, 16, 16, 0], [0, 48, 96, 144, 192], atol=3)


def test_webm_without_a_stored_frame_count_is_counted() -> None:
    clip = decode_video(
        make_video(random_frames(12, 32, 32), fmt="webm", codec="libvpx"), 0, LIMITS
    )
    assert clip.num_frames == 12 and clip.total_num_frames == 12


def test_sample_frame_indices_rules() -> None:
    assert sample_frame_indices(10, 10.0, fps=None, num_frames=None, max_frames=8) == list(
        range(10)
    )
    assert sample_frame_indices(10, 10.0, fps=None, num_frames=30, max_frames=8) == list(range(10))
    assert len(sample_frame_indices(600, 30.0, fps=30.0, num_frames=None, max_frames=8)) == 8
    assert sample_frame_indices(5, 10.0, fps=0.1, num_frames=None, max_frames=8) == [0]


def test_decoded_frames_are_sampled_with_their_fps() -> None:
    frames = random_frames(8, 16, 16)
    clip = decode_video(frames, 0, LIMITS, num_frames=4, metadata={"fps": 4.0})
    np.testing.assert_array_equal(clip.frames, frames[[0, 2, 4, 6]])
    assert clip.sampled_fps == pytest.approx(2.0)
    as_pil = [Image.fromarray(frame) for frame in frames]
    np.testing.assert_array_equal(decode_video(as_pil, 0, LIMITS).frames, frames)


def _zero_frame_avi() -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    return buffer.getvalue()


def test_zero_frame_video_is_refused() -> None:
    with pytest.raises(MediaError, match=r"^video 0: has no frames"):
        decode_video(_zero_frame_avi(), 0, LIMITS)
    with pytest.raises(MediaError, match=r"^video 4: has no frames"):
        decode_video(np.zeros((0, 8, 8, 3), np.uint8), 4, LIMITS)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda data: b"\x00" * 64 + data[64:], "not a decodable video"),
        (lambda data: b"garbage" * 40, "not a decodable video"),
    ],
    ids=["bad-header", "garbage"],
)
def test_corrupt_video_raises_media_error(mangle, reason: str) -> None:
    data = mangle(make_video(random_frames(4, 32, 32)))
    with pytest.raises(MediaError, match=rf"^video 2: {reason}"):
        decode_video(data, 2, LIMITS)


def test_video_limits() -> None:
    data = make_video(random_frames(20, 32, 32), fps=10)
    with pytest.raises(
        MediaLimitExceeded, match=r"^video 0: lasts 2.0 s, more than the limit of 1 s"
    ):
        decode_video(data, 0, MediaLimits(max_video_seconds=1.0))
    with pytest.raises(MediaLimitExceeded, match=r"^video 0: 20 frames would be kept"):
        decode_video(data, 0, MediaLimits(max_frames=8))
    with pytest.raises(MediaLimitExceeded, match=r"^video 0: 20 frames of 32x32 are 20480 pixels"):
        decode_video(data, 0, MediaLimits(max_video_pixels=20_000))
    assert (
        decode_video(data, 0, MediaLimits(max_video_pixels=20_000), num_frames=19).num_frames == 19
    )
    with pytest.raises(MediaLimitExceeded, match=r"^video 0: is 32x32 = 1024 pixels"):
        decode_video(data, 0, MediaLimits(max_pixels=1000))
    with pytest.raises(MediaError, match=r"^video 0: pass either fps or num_frames"):
        decode_video(data, 0, LIMITS, fps=1.0, num_frames=2)


# ------------------------------------------------------------------------------------------- audio


def test_wav_is_decoded_and_resampled_to_the_extractor_rate() -> None:
    waveform = tone(1.0, 22_050)
    decoded = decode_audio(make_wav(waveform, 22_050), 0, LIMITS, sampling_rate=16_000)
    assert decoded.dtype == np.float32 and decoded.shape == (16_000,)
    expected = tone(1.0, 16_000)
    assert np.abs(decoded[200:-200] - expected[200:-200]).max() < 2e-3  # same 440 Hz tone


def test_stereo_is_averaged_to_mono() -> None:
    left, right = tone(0.5, 16_000), np.zeros(8_000, np.float32)
    decoded = decode_audio(
        make_wav(np.stack([left, right], 1), 16_000), 0, LIMITS, sampling_rate=16_000
    )
    np.testing.assert_allclose(decoded, left / 2, atol=1e-4)


@pytest.mark.parametrize(("fmt", "subtype"), [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None)])
def test_compressed_audio_formats(fmt: str, subtype: str | None) -> None:
    if fmt not in soundfile.available_formats():
        pytest.skip(f"libsndfile here lacks {fmt}")
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(1.0, 16_000), 16_000, format=fmt, subtype=subtype)
    decoded = decode_audio(buffer.getvalue(), 0, LIMITS, sampling_rate=16_000)
    assert abs(decoded.shape[0] - 16_000) < 2_000 and 0.4 < np.abs(decoded).max() < 0.6


def test_aac_in_mp4_falls_back_to_pyav() -> None:
    import av

    waveform = tone(1.0, 16_000)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16_000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(waveform[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16_000, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    decoded = decode_audio(buffer.getvalue(), 0, LIMITS, sampling_rate=8_000)
    assert abs(decoded.shape[0] - 8_000) < 1_000 and 0.4 < np.abs(decoded).max() < 0.6


def test_resample_equals_librosa_default() -> None:
    import librosa

    waveform = np.random.default_rng(0).standard_normal(12_345).astype(np.float32)
    for source, target in [(44_100, 16_000), (8_000, 16_000)]:
        expected = librosa.resample(waveform, orig_sr=source, target_sr=target)
        np.testing.assert_array_equal(resample(waveform, source, target), expected)


def test_decoded_audio_inputs() -> None:
    waveform = tone(0.25, 16_000)
    np.testing.assert_array_equal(
        decode_audio((waveform, 16_000), 0, LIMITS, sampling_rate=16_000), waveform
    )
    as_dict = {"array": waveform, "sampling_rate": 8_000}
    assert decode_audio(as_dict, 0, LIMITS, sampling_rate=16_000).shape == (8_000,)
    with pytest.raises(
        MediaError, match=r"^audio 1: pass decoded audio as \(waveform, sampling_rate\)"
    ):
        decode_audio(waveform, 1, LIMITS, sampling_rate=16_000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "is empty"),
        (b"RIFF\x24\x00\x00\x00WAVEjunk", "not a decodable audio file"),
        (b"\x01\x02" * 500, "not a decodable audio file"),
    ],
    ids=["empty", "bad-wav", "garbage"],
)
def test_bad_audio_raises_media_error(data: bytes, reason: str) -> None:
    with pytest.raises(MediaError, match=rf"^audio 5: {reason}"):
        decode_audio(data, 5, LIMITS, sampling_rate=16_000)


def test_audio_limits_are_checked_from_the_header() -> None:
    data = make_wav(tone(3.0, 16_000), 16_000)
    with pytest.raises(
        MediaLimitExceeded, match=r"^audio 0: lasts 3.0 s, more than the limit of 2 s"
    ):
        decode_audio(data, 0, MediaLimits(max_audio_seconds=2.0), sampling_rate=16_000)
    with pytest.raises(MediaError, match=r"^audio 0: has no samples"):
        decode_audio((np.zeros(0, np.float32), 16_000), 0, LIMITS, sampling_rate=16_000)
