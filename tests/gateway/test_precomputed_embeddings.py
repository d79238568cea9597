"""The seed's superscript E: every row whose spec has `IE` takes precomputed image embeddings
[num_tokens, hidden] (plus `grid_thw` for Qwen2-VL); taken from our own encoder, they give the
same greedy tokens as the image itself. A count or width that does not fit is refused with both
numbers; a row without E refuses embeddings with the seed's rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from PIL import Image

from encoder_service import Encoder
from gateway import LLM, SamplingParams
from gateway.tools.tiny_models import tiny_model_path
from protos.encoder_messages import MediaItem
from protos.errors import InvalidRequest
from tests import mm_reference as ref

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
ENGINE = {"block_size": 4, "num_blocks": 256, "max_num_seqs": 8}
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass(frozen=True)
class Row:
    """A row whose spec has IE: its tiny model, a raw prompt, and the images it carries."""

    model: str
    prompt: str
    sizes: tuple[tuple[int, int], ...]  # (width, height) per image, in prompt order
    fixed_rows: int | None = None  # rows every image takes; None: it depends on the image


ROWS = (
    Row("llava", "USER: <image>\nWhat is it? ASSISTANT:", ((32, 32),), fixed_rows=16),
    # anyres: a wide image (a 2-tile canvas) and a square one
    Row("llava_next", "<image>\n<image>\nWhat is in it?", ((56, 40), (32, 32))),
    Row("internvl", "<IMG_CONTEXT>\n<IMG_CONTEXT>\nWhat is in it?", ((56, 40), (32, 32))),
    Row("qwen2_vl", f"{QWEN_IMAGE}{QWEN_IMAGE}What is in it?", ((56, 56), (84, 56))),
    Row("blip2", "Question: what is it? Answer:", ((32, 32),), fixed_rows=8),
    Row("paligemma", "<image>caption en", ((32, 32),), fixed_rows=16),
)
FIXED = tuple(row for row in ROWS if row.fixed_rows is not None)


def _images(row: Row) -> list[Image.Image]:
    colors = ((200, 30, 40), (20, 160, 40))
    return [
        ref.image(c, max(size)).resize(size) for c, size in zip(colors, row.sizes, strict=False)
    ]


def _given(path: Any, images: list[Image.Image]) -> list[dict[str, Any]]:
    """Our own encoder's answer per image, as a client sends it back: rows (+ grid_thw)."""
    with Encoder.from_pretrained(path, "image") as encoder:
        results = encoder.encode([MediaItem(decoded=image) for image in images])
    given = []
    for result in results:
        grid = result.metadata.get("grid_thw")
        given.append({"embeddings": result.embeddings, **({"grid_thw": grid} if grid else {})})
    return given


@pytest.fixture(scope="module", params=ROWS, ids=[row.model for row in ROWS])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Row, LLM]]:
    row = request.param
    limits = {"image": len(row.sizes)}
    llm = LLM(model=str(tiny_model_path(row.model)), limit_mm_per_prompt=limits, **ENGINE)
    yield row, llm
    llm.close()


def test_embeddings_give_the_same_greedy_tokens_as_the_images(served: tuple[Row, LLM]) -> None:
    row, llm = served
    images = _images(row)
    given = _given(tiny_model_path(row.model), images)
    if row.fixed_rows is not None:
        assert [g["embeddings"].shape[0] for g in given] == [row.fixed_rows] * len(images)
    by_pixels = llm.generate({"prompt": row.prompt, "multi_modal_data": {"image": images}}, GREEDY)
    by_rows = llm.generate({"prompt": row.prompt, "multi_modal_data": {"image": given}}, GREEDY)
    assert by_rows[0].prompt_token_ids == by_pixels[0].prompt_token_ids
    assert by_rows[0].outputs[0].token_ids == by_pixels[0].outputs[0].token_ids


@pytest.mark.parametrize("row", FIXED, ids=[row.model for row in FIXED])
def test_a_count_or_width_that_does_not_fit_names_both_numbers(row: Row) -> None:
    llm = LLM(model=str(tiny_model_path(row.model)), **ENGINE)
    try:
        n = row.fixed_rows - 1
        prompt = {"prompt": row.prompt, "multi_modal_data": {"image": torch.zeros(n, 64)}}
        with pytest.raises(InvalidRequest, match=rf"have {n} rows, but \w+ takes {n + 1} per"):
            llm.generate(prompt, GREEDY)
        prompt["multi_modal_data"] = {"image": torch.zeros(n + 1, 48)}
        with pytest.raises(InvalidRequest, match=r"have width 48, but .* hidden size is 64"):
            llm.generate(prompt, GREEDY)
        assert llm.generate("What is it?", GREEDY)[0].outputs[0].token_ids  # the LLM goes on
    finally:
        llm.close()


def test_a_row_without_e_refuses_embeddings_with_the_seed_rule() -> None:
    path = tiny_model_path("idefics3")  # the seed: Idefics3 takes T + I, no E
    llm = LLM(model=str(path), **ENGINE)
    try:
        rows = torch.zeros(4, 64)  # a tensor is an embeddings item, whatever its width
        prompt = {"prompt": "<image>What is it?", "multi_modal_data": {"image": rows}}
        with pytest.raises(InvalidRequest, match=r"accepts T \+ I: image cannot be given as"):
            llm.generate(prompt, GREEDY)
    finally:
        llm.close()
