"""Media as the files a user sends: PNG pictures, MP4 videos, 16-bit WAV audio."""

from __future__ import annotations

import io
import wave
from typing import Any

import numpy as np

VIDEO_RATE = 2  # frames per second: the encoder's default sampling keeps every frame


def png(image: Any) -> bytes:
    """A PIL image or a [H, W, 3] uint8 array as PNG bytes."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mp4(frames: np.ndarray) -> bytes:
    """[T, H, W, 3] uint8 frames as an H.264 MP4 at VIDEO_RATE frames per second."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=VIDEO_RATE)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def wav(waveform: np.ndarray, sampling_rate: int) -> bytes:
    """[samples] float32 in [-1, 1] as mono 16-bit PCM WAV."""
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sampling_rate)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()
