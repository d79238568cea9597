"""`config.architectures[0]` -> the Tower class that encodes that checkpoint's media."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from encoder_service.towers import (
    GenericTower,
    LlavaTower,
    MllamaTower,
    Qwen2_5_VLTower,
    Qwen2AudioTower,
    Qwen2VLTower,
    Tower,
    WhisperTower,
)
from protos.dtypes import config_dtype, resolve_dtype
from protos.errors import InvalidRequest, Unsupported
from protos.modality import MEDIA_MODALITIES, Modality
from protos.model_source import ALL_PATTERNS, resolve_model

TOWERS: dict[str, type[Tower]] = {
    tower.architecture: tower
    for tower in (
        LlavaTower,
        MllamaTower,
        Qwen2VLTower,
        Qwen2_5_VLTower,
        Qwen2AudioTower,
        WhisperTower,
    )
}


def architecture_of(config: Any) -> str:
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise Unsupported("the checkpoint's config.json names no architecture")
    return str(architectures[0])


def tower_class(architecture: str, config: Any = None) -> type[Tower]:
    """The native tower of `architecture` when it handles `config`, else the generic,
    processor-driven one."""
    native = TOWERS.get(architecture)
    if native is None or (config is not None and not native.handles(config)):
        return GenericTower
    return native


def check_modality(tower: type[Tower] | Tower, modality: str) -> Modality:
    """The Modality for `modality`; Unsupported when the architecture cannot encode it."""
    if modality not in MEDIA_MODALITIES:  # NOTE: "text" is a Modality too; no tower encodes it
        raise InvalidRequest(f"unknown modality {modality!r}; choose image, video or audio")
    value = Modality(modality)
    if value not in tower.modalities:
        accepted = " and ".join(tower.modalities)
        raise Unsupported(f"{tower.architecture} encodes {accepted} only: {value} is not supported")
    return value


def load_tower(
    path: str | Path,
    modality: str,
    *,
    dtype: str | torch.dtype,
    device: str | torch.device,
    processor_kwargs: Mapping[str, Any] | None = None,
    revision: str | None = None,
) -> tuple[Tower, Modality]:
    """Reads the config, checks the modality, builds the tower and loads its weights;
    `processor_kwargs` (--mm-processor-kwargs) are checked against its processors. A hub id
    is resolved first (`protos.model_source`: the HF hub or ModelScope, at `revision`)."""
    from transformers import AutoConfig

    path = resolve_model(str(path), revision=revision, allow_patterns=ALL_PATTERNS)
    config = AutoConfig.from_pretrained(path)
    cls = tower_class(architecture_of(config), config)
    check_modality(cls, modality)  # before loading weights: a wrong modality fails fast
    tower = cls.from_pretrained(
        path, config, dtype=resolve_dtype(dtype, config_dtype(config)), device=torch.device(device)
    )
    tower.configure_processor(processor_kwargs)
    return tower, check_modality(tower, modality)  # the generic tower knows its own only now
