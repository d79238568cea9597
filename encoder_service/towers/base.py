"""The Tower interface every architecture's encoder follows, and what it hands back.

A tower owns three steps:
- `decode`: file bytes (or decoded objects) -> pixels / frames / waveform, under MediaLimits;
- `prepare`: the HF processor's preprocessing of one item -> a `TowerInput` (CPU tensors);
- `forward`: a batch of TowerInputs -> one [num_tokens, hidden] tensor per item.

Towers are built from the transformers classes on the meta device and only their own weights
are read from the checkpoint (`encoder_service/weights.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from encoder_service import media
from encoder_service.media import MediaLimits
from encoder_service.towers.processor_kwargs import check_processor_kwargs, check_request_values
from encoder_service.weights import build_on_meta, load_tower_weights
from protos.modality import Modality

DEFAULT_VIDEO_FPS = 2.0  # NOTE: qwen-vl-utils' default when the processor sets none


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
    modalities: ClassVar[tuple[Modality, ...]]  # media only: never Modality.TEXT
    # checkpoint roots of the tower's weights, e.g. ("vision_tower", "multi_modal_projector")
    roots: ClassVar[tuple[str, ...]]
    # the image processor's size.shortest_edge / longest_edge count pixels (Qwen2-VL)
    size_is_pixel_count: ClassVar[bool] = False

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
        self.processor_kwargs: dict[str, Any] = {}  # --mm-processor-kwargs, checked

    def configure_processor(self, kwargs: Mapping[str, Any] | None) -> None:
        """Takes `--mm-processor-kwargs`; InvalidRequest for keys no processor here takes."""
        self.processor_kwargs = check_processor_kwargs(
            kwargs, self.hf_processors(), self.architecture
        )

    def check_request_kwargs(
        self, kwargs: Mapping[str, Any], limits: MediaLimits
    ) -> dict[str, Any]:
        """A request's own mm_processor_kwargs; InvalidRequest for keys no processor takes and
        for sizes or counts that would make the processed item exceed `limits`."""
        checked = check_processor_kwargs(
            kwargs, self.hf_processors(), self.architecture, "mm_processor_kwargs"
        )
        check_request_values(checked, limits, size_is_pixel_count=self.size_is_pixel_count)
        return checked

    def kwargs_for(self, request_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """The processor's arguments for one item: --mm-processor-kwargs, then the request's
        own (checked) on top, as vLLM merges them."""
        return {**self.processor_kwargs, **(request_kwargs or {})}

    def hf_processors(self) -> list[Any]:
        """The HF processors this tower calls (their arguments bound --mm-processor-kwargs)."""
        names = ("processor", "image_processor", "feature_extractor")
        return [getattr(self, name) for name in names if getattr(self, name, None) is not None]

    @classmethod
    def handles(cls, config: Any) -> bool:
        """Whether this tower encodes this checkpoint of its architecture (some architectures
        take several kinds of vision tower; the generic tower serves the others)."""
        return True

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
    def prepare(
        self,
        modality: Modality,
        decoded: Any,
        index: int,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> TowerInput:
        """Runs the processor on one decoded item with `kwargs_for(processor_kwargs)` (a
        request's checked mm_processor_kwargs). Raises MediaError naming `index`."""

    @abstractmethod
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        """One tower call for the batch; each result is [num_tokens, hidden] in `dtype`."""

    def check_embeddings(
        self, modality: Modality, embeddings: torch.Tensor, metadata: Mapping[str, Any], index: int
    ) -> dict[str, Any]:
        """Checks precomputed embeddings' metadata; returns the metadata to pass on."""
        return dict(metadata)


def group_by_shape(inputs: Sequence[TowerInput], key: str) -> list[list[int]]:
    """Positions of the inputs grouped by the shape of tensor `key` (stackable together)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(inputs):
        groups.setdefault(tuple(item.tensors[key].shape), []).append(i)
    return list(groups.values())
