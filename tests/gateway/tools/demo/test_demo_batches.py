"""Training batches: built like the mesh's prompts, the loss only on the answer, and for
Qwen2-Audio the same ids HF's own processor gives for the same chat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.tools.demo import checkpoints, synthetic
from gateway.tools.demo.batches import (
    IGNORE_INDEX,
    Qwen2AudioBatcher,
    Qwen2VLBatcher,
    chat_messages,
)
from gateway.tools.demo.synthetic import Example, Task


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Qwen2VLBatcher]:
    path = tmp_path_factory.mktemp("demo_vl")
    checkpoints.build_qwen2_vl(path)
    return path, Qwen2VLBatcher(path)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Qwen2AudioBatcher]:
    path = tmp_path_factory.mktemp("demo_audio")
    checkpoints.build_qwen2_audio(path)
    return path, Qwen2AudioBatcher(path)


def _examples() -> list[Example]:
    rng = np.random.default_rng(0)
    return [synthetic.sample(task, rng) for task in (Task.IMAGE, Task.VIDEO, Task.TEXT)]


def test_the_loss_sees_only_the_answer_and_its_end(vision: tuple[Path, Qwen2VLBatcher]) -> None:
    _, batcher = vision
    items = [batcher.prepare(example) for example in _examples()]
    batch = batcher.collate(items)
    for row, (example, item) in enumerate(zip(_examples(), items, strict=True)):
        labels = batch["labels"][row]
        answer = labels[labels != IGNORE_INDEX].tolist()
        assert answer == list(item.answer_ids)
        assert batcher.tokenizer.decode(answer[:-1]) == example.answer
        assert answer[-1] == batcher.tokenizer.convert_tokens_to_ids("<|im_end|>")
        start = len(item.prompt_ids)  # the answer follows the prompt, padding follows it
        assert batch["input_ids"][row, start : start + len(answer)].tolist() == answer
        assert int(batch["attention_mask"][row].sum()) == start + len(answer)


def test_media_rows_match_their_placeholders(vision: tuple[Path, Qwen2VLBatcher]) -> None:
    path, batcher = vision
    batch = batcher.collate([batcher.prepare(example) for example in _examples()])
    config = batcher.config
    # a 56x56 picture: grid (1, 4, 4), 4 tokens after the 2x2 merge; 4 frames: (2, 4, 4), 8
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert int((batch["input_ids"] == config.image_token_id).sum()) == 4
    assert int((batch["input_ids"] == config.video_token_id).sum()) == 8
    assert batch["pixel_values"].shape[0] == 16 and batch["pixel_values_videos"].shape[0] == 32
    assert int((batch["mm_token_type_ids"] == 1).sum()) == 4
    assert int((batch["mm_token_type_ids"] == 2).sum()) == 8


def test_audio_prompts_equal_hf_processor_ids(audio: tuple[Path, Qwen2AudioBatcher]) -> None:
    from transformers import AutoProcessor

    path, batcher = audio
    processor = AutoProcessor.from_pretrained(path)
    example = synthetic.sample(Task.AUDIO, np.random.default_rng(1))
    messages = chat_messages(example.task, example.question)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    hf = processor(
        text=text, audio=[example.media], sampling_rate=synthetic.SAMPLING_RATE, return_tensors="pt"
    )
    assert list(batcher.prepare(example).prompt_ids) == hf["input_ids"][0].tolist()


def test_answers_are_a_few_tokens_of_the_demo_tokenizer(
    vision: tuple[Path, Qwen2VLBatcher],
) -> None:
    """The tokenizer trained on the demo's lines: each answer is a few ids that decode back."""
    _, batcher = vision
    s = synthetic
    answers = [s.image_answer(c, shape) for c in s.COLORS for shape in s.SHAPES]
    answers += [s.video_answer(d) for d in s.DIRECTIONS] + [s.audio_answer(p) for p in s.PITCHES]
    for answer in answers:
        ids = batcher.answer_ids(answer)
        assert len(ids) <= 8 and batcher.tokenizer.decode(ids[:-1]) == answer, answer
