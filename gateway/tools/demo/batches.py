"""Training batches built through the mesh's own inference path: the chat template and
placeholder expansion of `gateway.prompt.PromptBuilder`, and the processors the encoders run
(Qwen2-VL's PIL image processor and video patches, Qwen2-Audio's feature extractor). So the
models learn exactly the prompts the mesh will send them.

Each example is prepared once (`prepare`: prompt ids + answer ids + `<|im_end|>`, and its
media tensors); `collate` pads prepared items into a batch whose loss sees only the answer
(labels are -100 on the prompt and on padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from gateway.prompt.builder import PromptBuilder
from gateway.prompt.slots import MediaSlot
from gateway.tools.demo.synthetic import SAMPLING_RATE, Example, Task

IGNORE_INDEX = -100  # what HF's cross-entropy skips


def chat_messages(task: Task, question: str) -> list[dict[str, Any]]:
    """One user turn, the media item first and then the question, as `meshserve chat` sends it."""
    parts: list[dict[str, Any]] = [] if task is Task.TEXT else [{"type": task.value}]
    parts.append({"type": "text", "text": question})
    return [{"role": "user", "content": parts}]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One example as model inputs: the prompt and answer ids, and its media tensors."""

    task: Task
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    tensors: dict[str, Any] = field(default_factory=dict)


class _Batcher:
    """Shared by both families: prompt building, answer ids and padding."""

    def __init__(self, path: Path) -> None:
        self.builder = PromptBuilder.from_pretrained(path)
        self.tokenizer = self.builder.tokenizer
        self.end_id = int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.pad_id = int(self.tokenizer.pad_token_id)

        # NOTE: a prompt depends only on its question and media grid: build each one once
        self.prompt_ids = cache(self._prompt_ids)
        self.answer_ids = cache(self._answer_ids)

    def _prompt_ids(self, task: Task, question: str, slot: MediaSlot | None) -> tuple[int, ...]:
        text = self.builder.render_chat(chat_messages(task, question))
        return tuple(self.builder.build(text, [] if slot is None else [slot]).token_ids)

    def _answer_ids(self, answer: str) -> tuple[int, ...]:
        return (*self.tokenizer(answer, add_special_tokens=False)["input_ids"], self.end_id)

    def pad(self, items: Sequence[Prepared]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, labels: [B, L], padded on the right."""
        length = max(len(item.prompt_ids) + len(item.answer_ids) for item in items)
        ids = torch.full((len(items), length), self.pad_id)
        labels = torch.full((len(items), length), IGNORE_INDEX)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            full = item.prompt_ids + item.answer_ids
            ids[row, : len(full)] = torch.tensor(full)
            labels[row, len(item.prompt_ids) : len(full)] = torch.tensor(item.answer_ids)
            mask[row, : len(full)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Qwen2VLBatcher(_Batcher):
    """Images, videos and text questions for Qwen2VLForConditionalGeneration."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoConfig, AutoImageProcessor

        from encoder_service.towers.qwen2_vl_processing import Qwen2VLVideoConfig

        super().__init__(path)
        self.config = AutoConfig.from_pretrained(path)
        self.image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        self.video_config = Qwen2VLVideoConfig.from_pretrained(path)

    def prepare(self, example: Example) -> Prepared:
        """Pixel values and grid as the encoder computes them; the prompt as the gateway does."""
        from encoder_service.towers.qwen2_vl_processing import preprocess_video

        slot, tensors = None, {}
        if example.task is Task.VIDEO:
            values, grid = preprocess_video(example.media, self.video_config)
            tensors = {"pixel_values_videos": values, "video_grid_thw": grid}
        elif example.task is Task.IMAGE:
            out = self.image_processor(images=[example.media], return_tensors="pt")
            grid = tuple(int(v) for v in out["image_grid_thw"][0])
            tensors = {"pixel_values": out["pixel_values"], "image_grid_thw": grid}
        if tensors:
            num_tokens = grid[0] * grid[1] * grid[2] // 4  # the 2x2 spatial merge
            slot = MediaSlot(example.task.value, num_tokens, "train", grid_thw=grid)
        prompt = self.prompt_ids(example.task, example.question, slot)
        return Prepared(example.task, prompt, self.answer_ids(example.answer), tensors)

    def collate(self, items: Sequence[Prepared]) -> dict[str, torch.Tensor]:
        batch = self.pad(items)
        for key in ("pixel_values", "pixel_values_videos"):
            values = [item.tensors[key] for item in items if key in item.tensors]
            if values:
                batch[key] = torch.cat(values)  # [patches, dim], in prompt order
        for key in ("image_grid_thw", "video_grid_thw"):
            grids = [item.tensors[key] for item in items if key in item.tensors]
            if grids:
                batch[key] = torch.tensor(grids)  # [items, 3]
        types = torch.zeros_like(batch["input_ids"])  # M-RoPE: 0 text, 1 image, 2 video
        types[batch["input_ids"] == self.config.image_token_id] = 1
        types[batch["input_ids"] == self.config.video_token_id] = 2
        batch["mm_token_type_ids"] = types
        return batch


class Qwen2AudioBatcher(_Batcher):
    """Audio questions for Qwen2AudioForConditionalGeneration."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoFeatureExtractor

        super().__init__(path)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(path)

    def prepare(self, example: Example) -> Prepared:
        """Log-mel features as the encoder computes them; the prompt as the gateway does."""
        from encoder_service.towers.qwen2_audio import Qwen2AudioTower

        features = self.feature_extractor(
            example.media,
            sampling_rate=SAMPLING_RATE,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        mask = features["attention_mask"][0]  # [frames]
        slot = MediaSlot("audio", Qwen2AudioTower.num_tokens(int(mask.sum())), "train")
        tensors = {"input_features": features["input_features"][0], "feature_attention_mask": mask}
        prompt = self.prompt_ids(example.task, example.question, slot)
        return Prepared(example.task, prompt, self.answer_ids(example.answer), tensors)

    def collate(self, items: Sequence[Prepared]) -> dict[str, torch.Tensor]:
        batch = self.pad(items)
        for key in ("input_features", "feature_attention_mask"):  # [B, mel, frames], [B, frames]
            batch[key] = torch.stack([item.tensors[key] for item in items])
        return batch
