"""`config.architectures[0]` -> the Tower class that encodes that checkpoint's media."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from encoder_service.towers import (
    LlavaTower,
    Modality,
    Qwen2_5_VLTower,
    Qwen2AudioTower,
    Qwen2VLTower,
    Tower,
)
from protos.errors import InvalidRequest, Unsupported

TOWERS: dict[str, type[Tower]] = {
    tower.architecture: tower
    for tower in (LlavaTower, Qwen2VLTower, Qwen2_5_VLTower, Qwen2AudioTower)
}

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def architecture_of(config: Any) -> str:
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise Unsupported("the checkpoint's config.json names no architecture")
    return str(architectures[0])


def tower_class(architecture: str) -> type[Tower]:
    """Raises Unsupported with the list of known architectures."""
    if architecture not in TOWERS:
        known = ", ".join(sorted(TOWERS))
        raise Unsupported(f"{architecture} has no media encoder in meshserve; supported: {known}")
    return TOWERS[architecture]


def check_modality(tower: type[Tower], modality: str) -> Modality:
    """The Modality for `modality`; Unsupported when the architecture cannot encode it."""
    try:
        value = Modality(modality)
    except ValueError:
        raise InvalidRequest(
            f"unknown modality {modality!r}; choose image, video or audio"
        ) from None
    if value not in tower.modalities:
        accepted = " and ".join(tower.modalities)
        raise Unsupported(f"{tower.architecture} encodes {accepted} only: {value} is not supported")
    return value


def resolve_dtype(dtype: str | torch.dtype, config: Any) -> torch.dtype:
    """ "auto" takes the checkpoint's dtype (float32 when it names none)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(saved, torch.dtype):
            return saved
        return _DTYPES.get(str(saved), torch.float32)
    if dtype not in _DTYPES:
        raise InvalidRequest(f"unknown dtype {dtype!r}; choose auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_tower(
    path: str | Path, modality: str, *, dtype: str | torch.dtype, device: str | torch.device
) -> tuple[Tower, Modality]:
    """Reads the config, checks the modality, builds the tower and loads its weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    cls = tower_class(architecture_of(config))
    value = check_modality(cls, modality)
    tower = cls.from_pretrained(
        path, config, dtype=resolve_dtype(dtype, config), device=torch.device(device)
    )
    return tower, value
