"""Mllama's (Llama 3.2 Vision) tiled vision tower: an image -> the states the language
model's cross-attention layers read (they feed the LM's cross-attention cache, not prompt
positions: <|image|> stays one prompt token).

HF's MllamaImageProcessor (PIL backend) cuts the image into up to `max_num_tiles` tiles of
the best supported aspect ratio (`aspect_ratio_ids`, `aspect_ratio_mask`); the vision model
and the projector turn them into `[max_num_tiles * num_patches, hidden]` rows, padding tiles
included, as HF's model computes them. The answer's metadata says which rows the image's
tokens attend (`cross_attention_rows`: its real tiles, first), and that the states are
cross-attention states (`cross_attention`), for the gateway to build the request's windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoder_service.errors import MediaError
from encoder_service.towers.base import Tower, TowerInput
from protos.modality import Modality

IMAGE_TOKEN = "<|image|>"


class MllamaTower(Tower):
    """MllamaVisionModel + multi_modal_projector with the checkpoint's image processor."""

    architecture = "MllamaForConditionalGeneration"
    modalities = (Modality.IMAGE,)
    roots = ("vision_model", "multi_modal_projector")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers.models.mllama.image_processing_pil_mllama import (
            MllamaImageProcessorPil,
        )

        # NOTE: the PIL backend: torchvision cannot load beside our CPU torch
        self.image_processor = MllamaImageProcessorPil.from_pretrained(self.path)
        vision = self.config.vision_config
        self.num_patches = (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers.models.mllama.modeling_mllama import MllamaVisionModel

        width = int(config.text_config.hidden_size)
        projector = nn.Linear(int(config.vision_config.vision_output_dim), width, bias=True)
        return {
            "vision_model": MllamaVisionModel(config.vision_config),
            "multi_modal_projector": projector,
        }

    def prepare(
        self,
        modality: Modality,
        decoded: Any,
        index: int,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> TowerInput:
        """A PIL image -> pixel_values [1, 1, tiles, 3, H, W] and its aspect-ratio tensors."""
        try:
            out = self.image_processor(
                [[decoded]], return_tensors="pt", **self.kwargs_for(processor_kwargs)
            )
        except (ValueError, TypeError) as error:
            raise MediaError(modality, index, f"the processor refused it: {error}") from error
        num_tiles = int(out["num_tiles"][0][0])
        tensors = {
            key: out[key] for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")
        }
        metadata = {
            "placeholder": IMAGE_TOKEN,
            "replacement": IMAGE_TOKEN,
            "embed_token_id": int(self.config.image_token_index),
            "cross_attention": True,
            "cross_attention_rows": num_tiles * self.num_patches,
        }
        return TowerInput(modality, tensors, metadata)

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        """Per item `[max_num_tiles * num_patches, hidden]` (one call per item: tiles differ)."""
        results = []
        for item in inputs:
            pixels = item.tensors["pixel_values"].to(self.device, self.dtype)
            states = self.module["vision_model"](
                pixel_values=pixels,
                aspect_ratio_ids=item.tensors["aspect_ratio_ids"].to(self.device),
                aspect_ratio_mask=item.tensors["aspect_ratio_mask"].to(self.device),
            ).last_hidden_state  # [1, 1, tiles, patches, vision_output_dim]
            projected = self.module["multi_modal_projector"](states)
            results.append(projected.reshape(-1, projected.shape[-1]))
        return results
