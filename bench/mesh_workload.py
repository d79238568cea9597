"""The requests of one bench/mesh.py round, sent alike to the in-process baseline and the mesh.

`text`: prompts of random tokens. `image`: the same, each after one image placeholder, with
one random image per request. Every round draws new prompts and images (seeded by the round),
so neither the LM's prefix cache nor the encoder's cache serves a later round from an earlier
one while the mesh stays up; the batch-1 requests are drawn apart from the streams likewise.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import random
from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen2-VL's


@dataclass(frozen=True, slots=True)
class Request:
    """One request: the text the gateway gets (`text`), the ids the engine gets for a text
    request (the gateway's tokenization of `text`), and its image as a base64 PNG, if any."""

    text: str
    prompt_ids: list[int]
    image_png_b64: str | None = None

    @property
    def image_png(self) -> bytes | None:
        return None if self.image_png_b64 is None else base64.b64decode(self.image_png_b64)


@dataclass(frozen=True, slots=True)
class Workload:
    """Args:
    kind: "text" or "image".
    warmup: sent first, untimed (2 tokens): connections, first step, the tower's first call.
    streams: sent all at once, `max_tokens` each (greedy, ignore_eos).
    batch1: sent one after another for time to first token (2 tokens each).
    """

    kind: str
    warmup: Request
    streams: list[Request]
    batch1: list[Request]
    max_tokens: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        raw = json.loads(text)
        requests = {key: [Request(**r) for r in raw[key]] for key in ("streams", "batch1")}
        warmup = Request(**raw["warmup"])
        return cls(kind=raw["kind"], warmup=warmup, max_tokens=raw["max_tokens"], **requests)


def make_workload(
    tokenizer: object, args: argparse.Namespace, round_index: int, image_side: int
) -> Workload:
    """`args`: bench/mesh.py's (workload, streams, prompt_len, batch1, batch1_prompt,
    max_tokens)."""
    rng = random.Random(round_index)
    with_image = args.workload == "image"

    def requests(n: int, length: int) -> list[Request]:
        return [_request(tokenizer, rng, length, with_image, image_side) for _ in range(n)]

    warmup = requests(1, 8)[0]
    streams = requests(args.streams, args.prompt_len)
    batch1 = requests(args.batch1, args.batch1_prompt)
    return Workload(args.workload, warmup, streams, batch1, args.max_tokens)


def _request(
    tokenizer: object, rng: random.Random, length: int, with_image: bool, side: int
) -> Request:
    ordinary = sorted(set(range(len(tokenizer))) - set(tokenizer.added_tokens_decoder))
    text = tokenizer.decode([rng.choice(ordinary) for _ in range(length)])  # no placeholders
    if not with_image:
        return Request(text, tokenizer(text, add_special_tokens=False)["input_ids"])
    return Request(IMAGE_PLACEHOLDER + text, [], _random_png(rng, side))


def _random_png(rng: random.Random, side: int) -> str:
    from PIL import Image

    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
