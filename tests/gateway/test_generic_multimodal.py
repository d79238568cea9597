"""The generic, processor-driven path, row by row: no model-specific code in the mesh.

For each row (a tiny random-weight checkpoint with its own HF processor), offline `LLM.generate`
(a raw prompt) and `LLM.chat` greedy equal HF `generate` on the same media, and the prompt ids
the gateway builds from what the encoders' processors said equal the HF processor's own.

HF's reference tokenizes a rendered chat without a second BOS, as its
`apply_chat_template(tokenize=True)` does (our prompt builder follows that rule).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from encoder_service.media import MediaLimits
from encoder_service.registry import load_tower
from gateway import LLM, SamplingParams
from gateway.prompt.builder import PromptBuilder
from gateway.prompt.slots import MediaSlot
from gateway.tools.tiny_models import tiny_model_path
from protos.hf_processor import load_processor
from tests import mm_reference as ref
from tests.parity import check_logprobs_close, our_tops

MAX_TOKENS = 12
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)
ENGINE = {"block_size": 4, "num_blocks": 256, "max_num_seqs": 8}
QUESTION = "What is in it?"


@dataclass(frozen=True, slots=True)
class Row:
    """One seed row: its tiny model and the media one prompt carries, in prompt order."""

    model: str
    media: tuple[str, ...]

    @property
    def limits(self) -> dict[str, int]:
        return dict(Counter(self.media))


ROWS = (
    Row("llava_next", ("image", "image")),  # anyres: a wide image, then a square one
    Row("llava_next_video", ("video",)),
    Row("llava_onevision", ("image", "image", "video")),
    Row("idefics3", ("image",)),  # split into tiles with row/col tags: non-contiguous rows
    Row("internvl", ("image", "image")),
    Row("aria", ("image", "image")),
    Row("aya_vision", ("image", "image")),  # beyond issue 10's list: TILE_<k> tags, Cohere2 LM
    Row("got_ocr2", ("image",)),  # beyond issue 10's list: 256 <imgpad> per page, Qwen2 LM
)
# The seed's spelling of each row (the support table counts these tests for it).
SEED_ROWS = {
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "internvl": "InternVLChatModel",
    "aria": "AriaForConditionalGeneration",
}


def _params(rows: tuple[Row, ...]) -> list[Any]:
    return [
        pytest.param(
            row,
            id=row.model,
            marks=[pytest.mark.seed_row(SEED_ROWS[row.model], "generate")]
            if row.model in SEED_ROWS
            else [],
        )
        for row in rows
    ]


# Aya Vision and GOT-OCR 2.0 are beyond issue 10's list and the seed's tables: they run with
# no mesh code (a tiny checkpoint only); their modality spec is derived from their config.


def _images() -> list[Image.Image]:
    """A wide picture (anyres / tiling picks a 2-tile canvas) and a square one."""
    return [ref.image((200, 30, 40), 40).resize((56, 40)), ref.image((20, 160, 40), 32)]


def _items(row: Row) -> list[tuple[str, Any]]:
    images, video = iter(_images()), ref.video_frames(4, 32)
    return [(m, next(images) if m == "image" else video) for m in row.media]


def _hf_inputs(processor: Any, text: str, items: list[tuple[str, Any]]) -> dict[str, Any]:
    media: dict[str, list[Any]] = {}
    for modality, value in items:
        media.setdefault(f"{modality}s", []).append(value)
    bos = processor.tokenizer.bos_token
    add_special_tokens = not (bos and text.startswith(bos))
    out = processor(
        text=[text], return_tensors="pt", add_special_tokens=add_special_tokens, **media
    )
    return dict(out)


def _raw_prompt(processor: Any, row: Row) -> str:
    return "\n".join([*(getattr(processor, f"{m}_token") for m in row.media), QUESTION])


def _messages(items: list[tuple[str, Any]], with_data: bool) -> list[dict[str, Any]]:
    parts = [{"type": m, **({m: v} if with_data else {})} for m, v in items]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]}]


def _check(out: Any, path: Path, inputs: dict[str, Any], name: str) -> None:
    completion = out.outputs[0]
    tokens, tops = ref.generate(ref.hf_model(path), inputs, MAX_TOKENS)
    matched = check_logprobs_close(
        list(completion.token_ids), our_tops(completion.logprobs), tokens, tops, name
    )
    assert matched >= MAX_TOKENS // 2, f"{name}: only {matched} tokens matched HF"


@pytest.fixture(scope="module", params=_params(ROWS))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Row, LLM]]:
    row = request.param
    path = tiny_model_path(row.model)
    llm = LLM(model=str(path), limit_mm_per_prompt=row.limits, **ENGINE)
    yield row, llm
    llm.close()


def test_generate_matches_hf(served: tuple[Row, LLM]) -> None:
    row, llm = served
    path, items = tiny_model_path(row.model), _items(row)
    processor = load_processor(path)
    prompt = _raw_prompt(processor, row)
    data: dict[str, list[Any]] = {}
    for modality, value in items:
        data.setdefault(modality, []).append(value)
    out = llm.generate({"prompt": prompt, "multi_modal_data": data}, GREEDY)[0]
    _check(out, path, _hf_inputs(processor, prompt, items), f"{row.model}-generate")


def test_chat_matches_hf(served: tuple[Row, LLM]) -> None:
    row, llm = served
    path, items = tiny_model_path(row.model), _items(row)
    processor = load_processor(path)
    out = llm.chat(_messages(items, with_data=True), GREEDY)[0]
    text = processor.apply_chat_template(_messages(items, False), add_generation_prompt=True)
    _check(out, path, _hf_inputs(processor, text, items), f"{row.model}-chat")


@pytest.mark.parametrize("row", _params(ROWS))
def test_prompt_ids_equal_the_hf_processor(row: Row) -> None:
    """The encoders' per-item answers, spliced by the gateway, give HF's prompt ids; each item's
    embedding rows land exactly on the model's embed-token positions."""
    path, items = tiny_model_path(row.model), _items(row)
    processor = load_processor(path)
    text = processor.apply_chat_template(_messages(items, False), add_generation_prompt=True)
    slots = [_slot(path, modality, value, i) for i, (modality, value) in enumerate(items)]
    built = PromptBuilder.from_pretrained(str(path)).build(text, slots)
    expected = _hf_inputs(processor, text, items)["input_ids"][0].tolist()
    assert built.token_ids == expected
    ids = np.array(built.token_ids)
    for placed in built.ranges:
        slot = slots[placed.item_index]
        window = ids[placed.offset : placed.offset + placed.length]
        mask = np.ones(placed.length, bool) if placed.is_embed is None else placed.is_embed
        assert placed.num_embeds == slot.num_tokens
        assert (window[np.asarray(mask)] == slot.embed_token_id).all()
    if row.model == "idefics3":  # row/col tags and <fake_token_around_image> stay prompt text
        assert all(r.is_embed is not None and not all(r.is_embed) for r in built.ranges)


def _slot(path: Path, modality: str, value: Any, index: int) -> MediaSlot:
    tower, kind = _tower(path, modality)
    decoded = tower.decode(kind, value, index, {}, MediaLimits(), {})
    item = tower.prepare(kind, decoded, index)
    rows = tower.forward([item])[0]  # [num_tokens, hidden]
    assert rows.shape[1] == tower.hidden_size
    meta = item.metadata
    return MediaSlot(
        modality,
        rows.shape[0],
        f"{modality}-{index}",
        placeholder=meta["placeholder"],
        replacement=meta["replacement"],
        embed_token_id=meta["embed_token_id"],
    )


_TOWERS: dict[tuple[Path, str], Any] = {}


def _tower(path: Path, modality: str) -> Any:
    if (path, modality) not in _TOWERS:
        _TOWERS[(path, modality)] = load_tower(path, modality, dtype="float32", device="cpu")
    return _TOWERS[(path, modality)]


def test_idefics3_chunks_cut_inside_tiles_and_the_prefix_cache_keep_parity() -> None:
    """Prefill chunks of 7 tokens end inside Idefics3's tiles, between row/col tags and image
    rows; a second request reuses the cached prefix. Both equal HF."""
    row = next(r for r in ROWS if r.model == "idefics3")
    path = tiny_model_path(row.model)
    items = _items(row)
    processor = load_processor(path)
    prompt = _raw_prompt(processor, row)
    llm = LLM(model=str(path), **{**ENGINE, "max_num_batched_tokens": 7})
    try:
        request = {"prompt": prompt, "multi_modal_data": {"image": items[0][1]}}
        first, second = (llm.generate(request, GREEDY)[0] for _ in range(2))
    finally:
        llm.close()
    assert second.num_cached_tokens > 0
    inputs = _hf_inputs(processor, prompt, items)
    for out in (first, second):
        _check(out, path, inputs, "idefics3-chunked")


# The seed's superscript E (precomputed embeddings) of these rows: test_precomputed_embeddings.py
