"""The `--dtype` flag -> a torch dtype: one reading for every service that loads weights."""

from __future__ import annotations

from typing import Any

import torch

from protos.errors import InvalidRequest

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype, config_dtype: object = None) -> torch.dtype:
    """A dtype name, a torch dtype or "auto" -> torch.dtype.

    Args:
        dtype: "float32", "float", "bfloat16", "float16", "half", a torch.dtype, or "auto".
        config_dtype: what the checkpoint saved (see `config_dtype`), used by "auto"; float32
            when it names no floating-point dtype.

    Raises:
        InvalidRequest: an unknown name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return _checkpoint_dtype(config_dtype)
    if dtype not in DTYPES:
        raise InvalidRequest(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def config_dtype(*configs: Any) -> object:
    """The dtype the first of `configs` that names one saved (`dtype`, or `torch_dtype`
    before transformers 5), e.g. a text config before its multimodal parent; None if none."""
    for config in configs:
        value = getattr(config, "dtype", None)
        if value is None and not hasattr(config, "dtype"):
            # NOTE: transformers 5 keeps `torch_dtype` as an alias that logs a warning
            value = getattr(config, "torch_dtype", None)
        if value is not None:
            return value
    return None


def _checkpoint_dtype(saved: object) -> torch.dtype:
    if isinstance(saved, str):  # "bfloat16" in config.json, or "torch.bfloat16"
        saved = getattr(torch, saved.removeprefix("torch."), None)
    if isinstance(saved, torch.dtype) and saved.is_floating_point:
        return saved
    return torch.float32
