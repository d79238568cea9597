"""Synthetic media for the encoder tests, made in-process (Pillow, PyAV, wave)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_image(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def random_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), np.uint8)


def make_video(
    frames: np.ndarray, fps: int = 10, fmt: str = "mp4", codec: str = "libx264"
) -> bytes:
    """Encodes [T, H, W, 3] uint8 frames with PyAV (yuv420p)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    """[N] float32 sine at 0.5 amplitude."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_wav(waveform: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV through the standard library (mono [N] or [N, C])."""
    import wave

    samples = waveform if waveform.ndim == 2 else waveform[:, None]
    pcm = np.clip(samples * 32767, -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(samples.shape[1])
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()
