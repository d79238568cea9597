"""The demo's synthetic tasks: pictures of coloured shapes, videos of a moving shape, high and
low tones, small sums; each example holds its question, its one right answer and its media.

Everything is drawn from a seeded `numpy.random.Generator`, so a training run and the fresh
examples a test checks are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 56  # Qwen2-VL: a multiple of 28 (patch 14 x merge 2), its minimum pixel count
VIDEO_FRAMES = 4
SAMPLING_RATE = 16_000
ADDENDS = range(1, 5)  # 16 sums to learn by heart, each answer one digit

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0)}  # (dx, dy)
PITCHES: dict[str, tuple[float, float]] = {"low": (150.0, 400.0), "high": (1500.0, 3500.0)}

IMAGE_QUESTION = "What is in the picture?"
VIDEO_QUESTION = "Which way does it move?"
AUDIO_QUESTION = "Is it a high or a low tone?"


class Task(Enum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class Example:
    """One question with its media and its only right answer.

    Args:
        media: a PIL image, [T, H, W, 3] uint8 frames, a [samples] float32 waveform at
            SAMPLING_RATE, or None for a text question.
    """

    task: Task
    question: str
    answer: str
    media: Any = None


def draw_shape(color: str, shape: str, size: int = IMAGE_SIZE, rng: Any = None) -> Image.Image:
    """A `shape` in `color` on a light background, 3/4 of the picture wide and centred; with
    `rng`, the background, the size and the centre vary a little (by up to 1/16 and 1/14 of the
    picture)."""
    jitter = (
        (lambda low, high: 0)
        if rng is None
        else (lambda low, high: int(rng.integers(low, high + 1)))
    )
    background = tuple(255 - jitter(0, 30) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    extent = size * 3 // 4 + jitter(-size // 16, size // 16)
    left = (size - extent) // 2 + jitter(-size // 14, size // 14)
    top = (size - extent) // 2 + jitter(-size // 14, size // 14)
    box = (left, top, left + extent - 1, top + extent - 1)
    _draw(ImageDraw.Draw(image), shape, box, COLORS[color])
    return image


def _draw(draw: Any, shape: str, box: tuple[int, int, int, int], fill: tuple[int, ...]) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)


def moving_frames(direction: str, rng: Any = None) -> np.ndarray:
    """[VIDEO_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3] uint8: a red square crossing the picture;
    with `rng`, its size, speed, height and start vary."""
    dx, dy = DIRECTIONS[direction]
    color, shape = "red", "square"
    extent = 16 if rng is None else int(rng.integers(14, 19))
    step = 10 if rng is None else int(rng.integers(9, 12))
    travel = step * (VIDEO_FRAMES - 1)
    lo, hi = 2, IMAGE_SIZE - extent - 2  # where a corner may be
    along = lo if rng is None else int(rng.integers(lo, hi - travel + 1))
    across = (IMAGE_SIZE - extent) // 2 if rng is None else int(rng.integers(lo, hi + 1))
    start = along if dx + dy > 0 else along + travel  # moving back starts far
    frames = []
    for index in range(VIDEO_FRAMES):
        offset = start + (dx + dy) * step * index
        left, top = (offset, across) if dx else (across, offset)
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
        box = (left, top, left + extent - 1, top + extent - 1)
        _draw(ImageDraw.Draw(image), shape, box, COLORS[color])
        frames.append(np.asarray(image))
    return np.stack(frames)


def tone(pitch: str, rng: Any = None) -> np.ndarray:
    """[samples] float32 at SAMPLING_RATE: a sine tone in the `pitch` band, 0.6 to 1.8 s."""
    low, high = PITCHES[pitch]
    hertz = (low + high) / 2 if rng is None else float(rng.uniform(low, high))
    seconds = 1.2 if rng is None else float(rng.uniform(0.6, 1.8))
    amplitude = 0.4 if rng is None else float(rng.uniform(0.2, 0.6))
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    return (amplitude * np.sin(2 * np.pi * hertz * t)).astype(np.float32)


def image_answer(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def video_answer(direction: str) -> str:
    return f"it moves {direction}"


def audio_answer(pitch: str) -> str:
    return f"a {pitch} tone"


def sum_question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def sample(task: Task, rng: np.random.Generator) -> Example:
    """A fresh random example of `task`."""
    if task is Task.IMAGE:
        color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        return Example(
            task, IMAGE_QUESTION, image_answer(color, shape), draw_shape(color, shape, rng=rng)
        )
    if task is Task.VIDEO:
        direction = str(rng.choice(list(DIRECTIONS)))
        return Example(task, VIDEO_QUESTION, video_answer(direction), moving_frames(direction, rng))
    if task is Task.AUDIO:
        pitch = str(rng.choice(list(PITCHES)))
        return Example(task, AUDIO_QUESTION, audio_answer(pitch), tone(pitch, rng))
    a, b = (int(v) for v in rng.choice(ADDENDS, 2))
    return Example(task, sum_question(a, b), str(a + b))


def corpus() -> tuple[str, ...]:
    """Every question and answer the demo's models learn: their tokenizers train on these, so
    each answer is a few tokens."""
    lines = [IMAGE_QUESTION, VIDEO_QUESTION, AUDIO_QUESTION]
    lines += [image_answer(c, s) for c in COLORS for s in SHAPES]
    lines += [video_answer(d) for d in DIRECTIONS] + [audio_answer(p) for p in PITCHES]
    lines += [sum_question(a, b) for a in ADDENDS for b in ADDENDS]
    return tuple(lines)
