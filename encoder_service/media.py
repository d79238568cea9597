"""Decode user media (file bytes or already-decoded objects) under hard limits.

Images go through Pillow, videos through PyAV, audio through soundfile (PyAV as the fallback
for containers libsndfile cannot read). Every check that can be made from a header is made
before any pixel or sample is decoded, so a 10000x10000 PNG or a ten-hour WAV costs a few
microseconds to refuse. Every failure is a `MediaError` naming the item.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from encoder_service.errors import MediaError, MediaLimitExceeded

_ADDRESS = re.compile(r"\s*<[^>]*>")  # "<_io.BytesIO object at 0x7f..>" in Pillow's messages


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """Hard limits on one media item.

    Args:
        max_bytes: size of the encoded file.
        max_pixels: width * height of an image or of one video frame, read from the header.
        max_frames: frames kept from one video after sampling.
        max_video_seconds: duration of the source video.
        max_audio_seconds: duration of the audio clip.
        max_video_pixels: frames kept x pixels per frame, i.e. the decoded video's size
            (1 << 29 pixels is 1.5 GiB of RGB; 250 frames of 1080p fit).
    """

    max_bytes: int = 64 << 20
    max_pixels: int = 8192 * 8192
    max_frames: int = 768
    max_video_seconds: float = 3600.0
    max_audio_seconds: float = 600.0
    max_video_pixels: int = 1 << 29

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_frames", "max_video_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MediaLimits.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_video_seconds", "max_audio_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaLimits.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True, eq=False)
class VideoClip:
    """Frames sampled from a video, with what is known about the source.

    Args:
        frames: [T, H, W, 3] uint8 RGB.
        fps: frame rate of the source (None when unknown).
        duration: duration of the source in seconds (None when unknown).
        total_num_frames: number of frames in the source.
        frame_indices: which source frames were kept, in order.
    """

    frames: np.ndarray  # [T, H, W, 3] uint8
    fps: float | None
    duration: float | None
    total_num_frames: int
    frame_indices: tuple[int, ...]

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def sampled_fps(self) -> float | None:
        """Frames per second of the kept frames (HF's `VideoMetadata.sampled_fps`)."""
        if self.fps is None:
            return None
        return len(self.frame_indices) / self.total_num_frames * self.fps


# ---------------------------------------------------------------------------------------- images


def decode_image(source: Any, index: int, limits: MediaLimits) -> Image.Image:
    """File bytes, a PIL image or a [H, W, 3] / [H, W] uint8 array -> an RGB PIL image."""
    if isinstance(source, Image.Image):
        _check_pixels("image", index, source.width, source.height, limits)
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return _image_from_array(source, index, limits)
    data = _as_bytes(source, "image", index, limits)
    image = _open_image(data, index)
    _check_pixels("image", index, image.width, image.height, limits)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Image.DecompressionBombError as e:
        raise MediaLimitExceeded("image", index, f"too many pixels ({e})") from None
    except Exception as e:  # Pillow's plugins raise many types on corrupt data
        raise MediaError("image", index, f"not a decodable image ({_clean(e)})") from None


def _open_image(data: bytes, index: int) -> Image.Image:
    """Reads only the header: the pixels stay undecoded until `.load()`."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise MediaLimitExceeded("image", index, f"too many pixels ({e})") from None
    except Exception as e:
        raise MediaError("image", index, f"not a decodable image ({_clean(e)})") from None


def _image_from_array(array: np.ndarray, index: int, limits: MediaLimits) -> Image.Image:
    is_gray = array.ndim == 2
    if not (is_gray or (array.ndim == 3 and array.shape[2] in (3, 4))) or array.dtype != np.uint8:
        raise MediaError(
            "image",
            index,
            f"a decoded image must be a uint8 array [H, W, 3], got {array.dtype} {list(array.shape)}",
        )
    _check_pixels("image", index, array.shape[1], array.shape[0], limits)
    return _to_rgb(Image.fromarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent pixels become white, as HF's `convert_to_rgb` does."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


# ---------------------------------------------------------------------------------------- videos


def decode_video(
    source: Any,
    index: int,
    limits: MediaLimits,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> VideoClip:
    """File bytes or decoded frames -> sampled frames.

    Args:
        source: file bytes, a [T, H, W, 3] uint8 array or a list of PIL images.
        fps: keep about this many frames per second of video.
        num_frames: keep this many frames, spread uniformly (exclusive with `fps`).
        metadata: for decoded frames, {"fps": source frame rate} when known.
    With neither `fps` nor `num_frames`, every frame is kept.
    """
    if fps is not None and num_frames is not None:
        raise MediaError("video", index, "pass either fps or num_frames, not both")
    if isinstance(source, np.ndarray | list | tuple):
        return _clip_from_frames(source, index, limits, fps, num_frames, metadata or {})
    data = _as_bytes(source, "video", index, limits)
    try:
        return _read_video(data, index, limits, fps, num_frames)
    except MediaError:
        raise
    except Exception as e:  # PyAV/FFmpeg errors on corrupt or unsupported containers
        raise MediaError("video", index, f"not a decodable video ({_clean(e)})") from None


def sample_frame_indices(
    total_num_frames: int,
    source_fps: float | None,
    *,
    fps: float | None,
    num_frames: int | None,
    max_frames: int,
) -> list[int]:
    """Uniformly spread frame indices, as HF's video processors choose them.

    `num_frames` is capped at the frames available; `fps` sampling is capped at `max_frames`
    (a longer video is sampled more sparsely, as HF and qwen-vl-utils do).
    """
    if num_frames is not None:
        count = min(num_frames, total_num_frames)
    elif fps is not None and source_fps:
        count = math.floor(total_num_frames / source_fps * fps)
        count = max(1, min(count, total_num_frames, max_frames))
    else:
        return list(range(total_num_frames))
    # NOTE: the same float32 arange as HF's `sample_frames`, so the same frames are picked
    indices = torch.arange(0, total_num_frames, total_num_frames / count).int().tolist()
    return [i for i in indices if i < total_num_frames][:count]


def _read_video(
    data: bytes, index: int, limits: MediaLimits, fps: float | None, num_frames: int | None
) -> VideoClip:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = _video_stream(container, index)
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels("video", index, width, height, limits)
        source_fps = _stream_fps(stream)
        total = stream.frames or _count_frames(container, stream)
        duration = _stream_duration(container, stream, total, source_fps)
    _check_frames_and_seconds(index, total, duration, limits)
    indices = sample_frame_indices(
        total, source_fps, fps=fps, num_frames=num_frames, max_frames=limits.max_frames
    )
    _check_num_sampled(index, len(indices), width, height, limits)
    with av.open(io.BytesIO(data), mode="r") as container:
        frames, kept = _decode_frames(container, index, indices, width, height)
    return VideoClip(np.stack(frames), source_fps, duration, max(total, kept[-1] + 1), tuple(kept))


def _video_stream(container: Any, index: int) -> Any:
    if not container.streams.video:
        raise MediaError("video", index, "has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _stream_fps(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _count_frames(container: Any, stream: Any) -> int:
    """Counts packets without decoding them, for containers (WebM) that do not store a count."""
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _stream_duration(
    container: Any, stream: Any, total: int, source_fps: float | None
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    if source_fps:
        return total / source_fps
    return None


def _check_frames_and_seconds(
    index: int, total: int, duration: float | None, limits: MediaLimits
) -> None:
    if total <= 0:
        raise MediaError("video", index, "has no frames")
    if duration is not None and duration > limits.max_video_seconds:
        raise MediaLimitExceeded(
            "video",
            index,
            f"lasts {duration:.1f} s, more than the limit of {limits.max_video_seconds:g} s",
        )


def _check_num_sampled(
    index: int, count: int, width: int, height: int, limits: MediaLimits
) -> None:
    if count > limits.max_frames:
        raise MediaLimitExceeded(
            "video",
            index,
            f"{count} frames would be kept, more than the limit of {limits.max_frames}; "
            "pass a lower fps or num_frames",
        )
    if count * width * height > limits.max_video_pixels:
        raise MediaLimitExceeded(
            "video",
            index,
            f"{count} frames of {width}x{height} are {count * width * height} pixels, more than "
            f"the limit of {limits.max_video_pixels}; pass a lower fps or num_frames",
        )


def _decode_frames(
    container: Any, index: int, indices: Sequence[int], width: int, height: int
) -> tuple[list[np.ndarray], list[int]]:
    """Decodes up to the last wanted frame; converts only the wanted ones to RGB."""
    wanted, last = set(indices), indices[-1]
    frames: list[np.ndarray] = []  # each [H, W, 3] uint8
    kept: list[int] = []
    for position, frame in enumerate(container.decode(container.streams.video[0])):
        if position in wanted:
            frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            kept.append(position)
        if position >= last:
            break
    if not frames:
        raise MediaError("video", index, "has no frames")
    return frames, kept


def _clip_from_frames(
    source: np.ndarray | Sequence[Any],
    index: int,
    limits: MediaLimits,
    fps: float | None,
    num_frames: int | None,
    metadata: Mapping[str, Any],
) -> VideoClip:
    frames = _frames_array(source, index)  # [T, H, W, 3] uint8
    _check_pixels("video", index, frames.shape[2], frames.shape[1], limits)
    source_fps = metadata.get("fps")
    source_fps = float(source_fps) if source_fps else None
    total = int(frames.shape[0])
    duration = total / source_fps if source_fps else None
    _check_frames_and_seconds(index, total, duration, limits)
    indices = sample_frame_indices(
        total, source_fps, fps=fps, num_frames=num_frames, max_frames=limits.max_frames
    )
    _check_num_sampled(index, len(indices), frames.shape[2], frames.shape[1], limits)
    return VideoClip(frames[indices], source_fps, duration, total, tuple(indices))


def _frames_array(source: np.ndarray | Sequence[Any], index: int) -> np.ndarray:
    if not isinstance(source, np.ndarray):
        if len(source) == 0:
            raise MediaError("video", index, "has no frames")
        if not all(isinstance(frame, Image.Image) for frame in source):
            raise MediaError("video", index, "decoded frames must be PIL images or one array")
        sizes = {frame.size for frame in source}
        if len(sizes) != 1:
            raise MediaError("video", index, f"frames differ in size: {sorted(sizes)}")
        source = np.stack([np.asarray(_to_rgb(frame)) for frame in source])
    if source.ndim != 4 or source.shape[3] != 3 or source.dtype != np.uint8:
        raise MediaError(
            "video",
            index,
            f"decoded frames must be a uint8 array [T, H, W, 3], got {source.dtype} "
            f"{list(source.shape)}",
        )
    if source.shape[0] == 0:
        raise MediaError("video", index, "has no frames")
    return source


# ----------------------------------------------------------------------------------------- audio


def decode_audio(source: Any, index: int, limits: MediaLimits, *, sampling_rate: int) -> np.ndarray:
    """File bytes, (waveform, rate) or {"array", "sampling_rate"} -> [num_samples] float32 mono
    at `sampling_rate`."""
    if isinstance(source, tuple | Mapping):
        waveform, source_rate = _waveform_and_rate(source, index)
    elif isinstance(source, np.ndarray | torch.Tensor):
        raise MediaError("audio", index, "pass decoded audio as (waveform, sampling_rate)")
    else:
        data = _as_bytes(source, "audio", index, limits)
        waveform, source_rate = _read_audio(data, index, limits)
    mono = _to_mono(waveform, index)
    _check_audio_seconds(index, mono.shape[0], source_rate, limits)
    return resample(mono, source_rate, sampling_rate)


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """[N] float32 -> [ceil(N * target / source)] float32, equal to `librosa.resample`'s default
    (soxr "HQ" then a fixed length), without importing librosa's numba modules (~2 s)."""
    if source_rate == target_rate:
        return waveform
    try:
        import soxr
    except ImportError:  # librosa's own dependency; fall back to librosa itself
        import librosa

        return librosa.resample(waveform, orig_sr=source_rate, target_sr=target_rate)
    num_samples = math.ceil(waveform.shape[0] * (target_rate / source_rate))  # librosa's rounding
    resampled = soxr.resample(waveform, source_rate, target_rate, quality="soxr_hq")
    if resampled.shape[0] >= num_samples:
        return np.ascontiguousarray(resampled[:num_samples], dtype=np.float32)
    return np.pad(resampled, (0, num_samples - resampled.shape[0])).astype(np.float32)


def _waveform_and_rate(source: tuple | Mapping, index: int) -> tuple[np.ndarray, int]:
    if isinstance(source, Mapping):
        source = (source.get("array"), source.get("sampling_rate"))
    if len(source) != 2:
        raise MediaError("audio", index, "pass decoded audio as (waveform, sampling_rate)")
    waveform, rate = source
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    if not isinstance(waveform, np.ndarray) or not np.issubdtype(waveform.dtype, np.number):
        raise MediaError("audio", index, "the waveform must be a numeric array")
    if not isinstance(rate, int | np.integer) or rate <= 0:
        raise MediaError("audio", index, f"the sampling rate must be a positive int, got {rate!r}")
    return waveform.astype(np.float32, copy=False), int(rate)


def _to_mono(waveform: np.ndarray, index: int) -> np.ndarray:
    """[N] or [N, C] (soundfile layout) -> [N] float32; channels averaged as librosa does."""
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1)
    if waveform.ndim != 1:
        raise MediaError(
            "audio", index, f"the waveform must be [N] or [N, C], got {waveform.shape}"
        )
    if waveform.shape[0] == 0:
        raise MediaError("audio", index, "has no samples")
    if not np.isfinite(waveform).all():
        raise MediaError("audio", index, "the waveform contains NaN or infinity")
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _check_audio_seconds(index: int, num_samples: int, rate: int, limits: MediaLimits) -> None:
    seconds = num_samples / rate
    if seconds > limits.max_audio_seconds:
        raise MediaLimitExceeded(
            "audio",
            index,
            f"lasts {seconds:.1f} s, more than the limit of {limits.max_audio_seconds:g} s",
        )


def _read_audio(data: bytes, index: int, limits: MediaLimits) -> tuple[np.ndarray, int]:
    """soundfile (WAV, FLAC, OGG, MP3 through libsndfile) first, PyAV for the rest."""
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            _check_audio_seconds(index, sound.frames, sound.samplerate, limits)
            return sound.read(dtype="float32", always_2d=True), sound.samplerate  # [N, C]
    except MediaError:
        raise
    except Exception:
        pass  # not a libsndfile format: let FFmpeg try
    try:
        return _read_audio_av(data, index, limits)
    except MediaError:
        raise
    except Exception as e:
        raise MediaError("audio", index, f"not a decodable audio file ({_clean(e)})") from None


def _read_audio_av(data: bytes, index: int, limits: MediaLimits) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise MediaError("audio", index, "has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
        chunks: list[np.ndarray] = []  # each [C, n] float32
        num_samples = 0
        for frame in container.decode(stream):
            for planar in resampler.resample(frame):
                chunks.append(planar.to_ndarray())
                num_samples += chunks[-1].shape[1]
            _check_audio_seconds(index, num_samples, rate, limits)  # stop early on long files
    if not chunks:
        raise MediaError("audio", index, "has no samples")
    return np.concatenate(chunks, axis=1).T, rate  # [N, C]


# ---------------------------------------------------------------------------------------- shared


def _as_bytes(source: Any, modality: str, index: int, limits: MediaLimits) -> bytes:
    if not isinstance(source, bytes | bytearray | memoryview):
        raise MediaError(modality, index, f"unsupported input of type {type(source).__name__}")
    data = bytes(source)
    if not data:
        raise MediaError(modality, index, "is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaLimitExceeded(
            modality, index, f"is {len(data)} bytes, more than the limit of {limits.max_bytes}"
        )
    return data


def _check_pixels(modality: str, index: int, width: int, height: int, limits: MediaLimits) -> None:
    if width <= 0 or height <= 0:
        raise MediaError(modality, index, f"has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise MediaLimitExceeded(
            modality,
            index,
            f"is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{limits.max_pixels}",
        )


def _clean(error: Exception) -> str:
    """The library's reason without object addresses or FFmpeg's "[Errno N] ...: ''" dressing."""
    strerror = getattr(error, "strerror", None)  # PyAV's FFmpegError, OSError
    text = strerror if isinstance(strerror, str) and strerror else str(error)
    if isinstance(error, EOFError):
        text = "the file ends before any content (empty or truncated)"
    return _ADDRESS.sub("", text).strip() or type(error).__name__
