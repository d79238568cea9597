"""Qwen2-VL and Qwen2.5-VL: the `visual` module (patch embed, blocks, merger); images and videos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch
from torch import nn

from encoder_service.errors import MediaError
from encoder_service.media import VideoClip
from encoder_service.towers.base import DEFAULT_VIDEO_FPS, Tower, TowerInput
from encoder_service.towers.patch_projection import project_patches_as_linear
from encoder_service.towers.qwen2_vl_processing import Qwen2VLVideoConfig, preprocess_video
from protos.modality import Modality


class Qwen2VLTower(Tower):
    """The `visual` module (patch embed, blocks, merger); images and videos.

    Each item returns `grid_thw` (patches before the 2x2 merge); its token count is
    t * h * w / spatial_merge_size**2.
    """

    architecture = "Qwen2VLForConditionalGeneration"
    modalities = (Modality.IMAGE, Modality.VIDEO)
    roots = ("visual",)
    size_is_pixel_count = True  # size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers import AutoImageProcessor

        self.image_processor = AutoImageProcessor.from_pretrained(self.path, backend="pil")
        self.video_config = Qwen2VLVideoConfig.from_pretrained(self.path)
        project_patches_as_linear(self.module["visual"].patch_embed)

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VisionTransformerPretrainedModel,
        )

        return {"visual": Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config)}

    @property
    def merge_size(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    @property
    def default_video_fps(self) -> float:
        return self.video_config.fps or DEFAULT_VIDEO_FPS

    def prepare(
        self,
        modality: Modality,
        decoded: Any,
        index: int,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> TowerInput:
        try:
            if modality is Modality.IMAGE:
                return self._prepare_image(decoded, self.kwargs_for(processor_kwargs))
            return self._prepare_video(decoded)
        except ValueError as e:  # smart_resize: aspect ratio over 200
            raise MediaError(modality, index, str(e)) from None

    def _prepare_image(self, image: Any, kwargs: Mapping[str, Any]) -> TowerInput:
        out = self.image_processor(images=[image], return_tensors="pt", **kwargs)
        grid = tuple(int(v) for v in out["image_grid_thw"][0])
        return TowerInput(Modality.IMAGE, {"pixel_values": out["pixel_values"]}, {"grid_thw": grid})

    def _prepare_video(self, clip: VideoClip) -> TowerInput:
        pixel_values, grid = preprocess_video(clip.frames, self.video_config)
        return TowerInput(
            Modality.VIDEO, {"pixel_values": pixel_values}, self._video_metadata(clip, grid)
        )

    def _video_metadata(self, clip: VideoClip, grid: tuple[int, int, int]) -> dict[str, Any]:
        return {"grid_thw": grid}

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        pixel_values = torch.cat([item.tensors["pixel_values"] for item in inputs])  # [P, D]
        grids = torch.tensor([item.metadata["grid_thw"] for item in inputs], device=self.device)
        merged = self.module["visual"](
            pixel_values.to(self.device, self.dtype), grid_thw=grids, return_dict=True
        ).pooler_output  # [sum(t*h*w) / merge**2, hidden]
        sizes = (grids.prod(-1) // self.merge_size**2).tolist()
        return list(torch.split(merged, sizes))

    def check_embeddings(
        self, modality: Modality, embeddings: torch.Tensor, metadata: Mapping[str, Any], index: int
    ) -> dict[str, Any]:
        grid = _grid_thw(metadata.get("grid_thw"))
        if grid is None:
            raise MediaError(
                modality, index, "precomputed embeddings need metadata grid_thw = (t, h, w)"
            )
        t, h, w = grid
        if h % self.merge_size or w % self.merge_size:
            raise MediaError(
                modality,
                index,
                f"grid_thw {grid}: h and w must be multiples of the spatial merge size "
                f"({self.merge_size})",
            )
        merge = self.merge_size**2
        if (t * h * w) % merge or t * h * w // merge != embeddings.shape[0]:
            raise MediaError(
                modality,
                index,
                f"grid_thw {grid} implies {t * h * w / merge:g} tokens (t*h*w/{merge}), "
                f"but the embeddings have {embeddings.shape[0]}",
            )
        return {**metadata, "grid_thw": grid}


def _grid_thw(value: Any) -> tuple[int, int, int] | None:
    """(t, h, w) of positive integers from a tuple, list, array or tensor; None if not one."""
    if isinstance(value, torch.Tensor | np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        return None
    if not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in value):
        return None
    return (int(value[0]), int(value[1]), int(value[2]))


class Qwen2_5_VLTower(Qwen2VLTower):
    """As Qwen2-VL (window attention inside the visual module); videos also return
    `second_per_grid_t` = temporal_patch_size / sampled fps, used by its M-RoPE positions."""

    architecture = "Qwen2_5_VLForConditionalGeneration"

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
        )

        return {
            "visual": Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)
        }

    def _video_metadata(self, clip: VideoClip, grid: tuple[int, int, int]) -> dict[str, Any]:
        fps = clip.sampled_fps or 24.0  # NOTE: HF's VideoMetadata default without metadata
        return {"grid_thw": grid, "second_per_grid_t": self.video_config.temporal_patch_size / fps}
