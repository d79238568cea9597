"""Encoder towers: per architecture, the sub-modules that turn media into LM-sized embeddings.

A tower owns three steps:
- `decode`: file bytes (or decoded objects) -> pixels / frames / waveform, under MediaLimits;
- `prepare`: the HF processor's preprocessing of one item -> a `TowerInput` (CPU tensors);
- `forward`: a batch of TowerInputs -> one [num_tokens, hidden] tensor per item.

Towers are built from the transformers classes on the meta device and only their own weights
are read from the checkpoint (`weights.py`).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from encoder_service import media
from encoder_service.errors import MediaError, MediaLimitExceeded
from encoder_service.media import MediaLimits, VideoClip
from encoder_service.qwen2_vl_processing import Qwen2VLVideoConfig, preprocess_video
from encoder_service.weights import build_on_meta, load_tower_weights

DEFAULT_VIDEO_FPS = 2.0  # NOTE: qwen-vl-utils' default when the processor sets none


class Modality(enum.StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True, eq=False)
class TowerInput:
    """One preprocessed item, ready to be batched into a tower call.

    Args:
        modality: what the item is.
        tensors: the model inputs of this item alone, on the CPU (shapes per tower).
        metadata: model-specific facts returned with the embeddings (e.g. grid_thw).
    """

    modality: Modality
    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, Any] = field(default_factory=dict)


class Tower(ABC):
    """Preprocessing + tower + projector of one multimodal architecture.

    Args:
        config: the checkpoint's HF config.
        path: the checkpoint folder.
        module: the tower's modules, keyed by their checkpoint roots, weights loaded.
        dtype, device: where the module lives.
    """

    architecture: ClassVar[str]
    modalities: ClassVar[tuple[Modality, ...]]
    # checkpoint roots of the tower's weights, e.g. ("vision_tower", "multi_modal_projector")
    roots: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        config: Any,
        path: Path,
        module: nn.ModuleDict,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.config = config
        self.path = path
        self.module = module
        self.dtype = dtype
        self.device = device

    @classmethod
    def from_pretrained(
        cls, path: str | Path, config: Any, *, dtype: torch.dtype, device: torch.device
    ) -> Tower:
        module = build_on_meta(lambda: nn.ModuleDict(cls.build_modules(config)))
        load_tower_weights(module, path, cls.roots, dtype=dtype, device=device)
        module.eval().requires_grad_(False)
        return cls(config, Path(path), module, dtype, device)

    @staticmethod
    @abstractmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        """The tower's modules by checkpoint root, built from `config` (on meta, by the caller)."""

    @property
    def hidden_size(self) -> int:
        """Width of the embeddings: the language model's hidden size."""
        return int(self.config.get_text_config().hidden_size)

    def decode(
        self,
        modality: Modality,
        source: Any,
        index: int,
        options: Mapping[str, Any],
        limits: MediaLimits,
        metadata: Mapping[str, Any],
    ) -> Any:
        """File bytes or a decoded object -> what `prepare` takes."""
        if modality is Modality.IMAGE:
            return media.decode_image(source, index, limits)
        if modality is Modality.VIDEO:
            return media.decode_video(
                source,
                index,
                limits,
                fps=options.get("fps"),
                num_frames=options.get("num_frames"),
                metadata=metadata,
            )
        return media.decode_audio(source, index, limits, sampling_rate=self.sampling_rate)

    @property
    def sampling_rate(self) -> int:
        """Audio towers: the feature extractor's rate, which decoded audio is resampled to."""
        raise NotImplementedError(f"{self.architecture} takes no audio")

    @property
    def default_video_fps(self) -> float:
        return DEFAULT_VIDEO_FPS

    @abstractmethod
    def prepare(self, modality: Modality, decoded: Any, index: int) -> TowerInput:
        """Runs the processor on one decoded item. Raises MediaError naming `index`."""

    @abstractmethod
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        """One tower call for the batch; each result is [num_tokens, hidden] in `dtype`."""

    def check_embeddings(
        self, modality: Modality, embeddings: torch.Tensor, metadata: Mapping[str, Any], index: int
    ) -> dict[str, Any]:
        """Checks precomputed embeddings' metadata; returns the metadata to pass on."""
        return dict(metadata)


# ------------------------------------------------------------------------------------------ LLaVA


class LlavaTower(Tower):
    """CLIP/SigLIP vision tower + multi_modal_projector, honouring vision_feature_layer (an
    int or a list, concatenated) and vision_feature_select_strategy ("default" drops CLS)."""

    architecture = "LlavaForConditionalGeneration"
    modalities = (Modality.IMAGE,)
    roots = ("vision_tower", "multi_modal_projector")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers import AutoImageProcessor

        self.image_processor = AutoImageProcessor.from_pretrained(self.path, backend="pil")

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers import AutoModel
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        return {
            "vision_tower": AutoModel.from_config(config.vision_config),
            "multi_modal_projector": LlavaMultiModalProjector(config),
        }

    def prepare(self, modality: Modality, decoded: Any, index: int) -> TowerInput:
        pixel_values = self.image_processor(images=[decoded], return_tensors="pt")["pixel_values"]
        return TowerInput(modality, {"pixel_values": pixel_values[0]})  # [3, H, W]

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        results: list[torch.Tensor | None] = [None] * len(inputs)
        for positions in _group_by_shape(inputs, "pixel_values"):
            pixel_values = torch.stack([inputs[i].tensors["pixel_values"] for i in positions])
            embeddings = self._embed(pixel_values.to(self.device, self.dtype))  # [B, N, hidden]
            for i, item in zip(positions, embeddings, strict=True):
                results[i] = item
        return results  # type: ignore[return-value]

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_tokens, hidden], as LlavaModel.get_image_features."""
        layers = self.config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        hidden_states = self.module["vision_tower"](
            pixel_values, output_hidden_states=True, return_dict=True
        ).hidden_states
        selected = [hidden_states[layer] for layer in layers]  # each [B, 1 + patches, vision]
        if self.config.vision_feature_select_strategy == "default":
            selected = [states[:, 1:] for states in selected]  # drop CLS
        return self.module["multi_modal_projector"](torch.cat(selected, dim=-1))


# ---------------------------------------------------------------------------------------- Qwen2-VL


class Qwen2VLTower(Tower):
    """The `visual` module (patch embed, blocks, merger); images and videos.

    Each item returns `grid_thw` (patches before the 2x2 merge); its token count is
    t * h * w / spatial_merge_size**2.
    """

    architecture = "Qwen2VLForConditionalGeneration"
    modalities = (Modality.IMAGE, Modality.VIDEO)
    roots = ("visual",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers import AutoImageProcessor

        self.image_processor = AutoImageProcessor.from_pretrained(self.path, backend="pil")
        self.video_config = Qwen2VLVideoConfig.from_pretrained(self.path)

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

    def prepare(self, modality: Modality, decoded: Any, index: int) -> TowerInput:
        try:
            if modality is Modality.IMAGE:
                return self._prepare_image(decoded)
            return self._prepare_video(decoded)
        except ValueError as e:  # smart_resize: aspect ratio over 200
            raise MediaError(modality, index, str(e)) from None

    def _prepare_image(self, image: Any) -> TowerInput:
        out = self.image_processor(images=[image], return_tensors="pt")
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


# ------------------------------------------------------------------------------------- Qwen2-Audio


class Qwen2AudioTower(Tower):
    """Whisper-style audio tower + linear projector.

    An item of L mel frames (the feature extractor's attention mask) gives
    (((L - 1) // 2 + 1) - 2) // 2 + 1 tokens, as HF's processor and model compute it.
    """

    architecture = "Qwen2AudioForConditionalGeneration"
    modalities = (Modality.AUDIO,)
    roots = ("audio_tower", "multi_modal_projector")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers import AutoFeatureExtractor

        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.path)

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers import AutoModel
        from transformers.models.qwen2_audio.modeling_qwen2_audio import (
            Qwen2AudioMultiModalProjector,
        )

        return {
            "audio_tower": AutoModel.from_config(config.audio_config),
            "multi_modal_projector": Qwen2AudioMultiModalProjector(config),
        }

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def max_seconds(self) -> float:
        """The feature extractor's window; HF would silently cut longer audio."""
        return float(self.feature_extractor.n_samples / self.sampling_rate)

    def prepare(self, modality: Modality, decoded: Any, index: int) -> TowerInput:
        seconds = decoded.shape[0] / self.sampling_rate
        if seconds > self.max_seconds:
            raise MediaLimitExceeded(
                modality,
                index,
                f"lasts {seconds:.2f} s; this model encodes at most {self.max_seconds:g} s per item",
            )
        features = self.feature_extractor(
            decoded,
            sampling_rate=self.sampling_rate,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        tensors = {
            "input_features": features["input_features"][0],  # [mel, frames]
            "feature_length": features["attention_mask"][0].sum(),  # scalar: valid frames
        }
        return TowerInput(modality, tensors)

    @staticmethod
    def num_tokens(num_feature_frames: int) -> int:
        """Audio tokens for an item of `num_feature_frames` valid mel frames."""
        return (((num_feature_frames - 1) // 2 + 1) - 2) // 2 + 1

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        tower = self.module["audio_tower"]
        features = torch.stack([item.tensors["input_features"] for item in inputs])
        features = features.to(self.device, self.dtype)  # [B, mel, frames]
        lengths = torch.stack([item.tensors["feature_length"] for item in inputs]).to(self.device)
        conv_lengths, num_tokens = tower._get_feat_extract_output_lengths(lengths)
        max_len = (features.shape[-1] - 2) // 2 + 1
        valid = torch.arange(max_len, device=self.device)[None, :] < conv_lengths[:, None]
        dummy = torch.zeros(len(inputs), max_len, 1, dtype=self.dtype, device=self.device)
        mask = create_bidirectional_mask(
            config=tower.config, inputs_embeds=dummy, attention_mask=valid.long()
        )
        hidden = tower(features, attention_mask=mask).last_hidden_state  # [B, tokens, d_model]
        embeddings = self.module["multi_modal_projector"](hidden)  # [B, tokens, hidden]
        return [embeddings[i, :n] for i, n in enumerate(num_tokens.tolist())]


def _group_by_shape(inputs: Sequence[TowerInput], key: str) -> list[list[int]]:
    """Positions of the inputs grouped by the shape of tensor `key` (stackable together)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(inputs):
        groups.setdefault(tuple(item.tensors[key].shape), []).append(i)
    return list(groups.values())
