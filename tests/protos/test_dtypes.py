"""The shared `--dtype` reading: names, "auto" from the checkpoint's config, unknown names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from protos.dtypes import config_dtype, resolve_dtype
from protos.errors import InvalidRequest


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("float", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("half", torch.float16),
    ],
)
def test_explicit_names(name: str, expected: torch.dtype) -> None:
    assert resolve_dtype(name) is expected
    assert resolve_dtype(name, torch.bfloat16) is expected  # the checkpoint's does not matter


def test_a_torch_dtype_is_taken_as_is() -> None:
    assert resolve_dtype(torch.float16, torch.bfloat16) is torch.float16


def test_auto_uses_the_config_dtype_or_torch_dtype() -> None:
    assert resolve_dtype("auto", config_dtype(SimpleNamespace(dtype=torch.bfloat16))) is (
        torch.bfloat16
    )
    older = SimpleNamespace(torch_dtype="float16")  # transformers 4: only torch_dtype, a name
    assert resolve_dtype("auto", config_dtype(older)) is torch.float16
    assert resolve_dtype("auto", "torch.bfloat16") is torch.bfloat16
    text, parent = SimpleNamespace(dtype=None), SimpleNamespace(dtype=torch.float16)
    assert config_dtype(text, parent) is torch.float16  # the first config that names one


def test_auto_falls_back_to_float32() -> None:
    assert resolve_dtype("auto", config_dtype(SimpleNamespace(dtype=None))) is torch.float32
    assert resolve_dtype("auto", config_dtype(SimpleNamespace())) is torch.float32
    assert resolve_dtype("auto", torch.int8) is torch.float32  # not a float: weights stay float
    assert resolve_dtype("auto", "not-a-dtype") is torch.float32


def test_a_real_config_gives_its_saved_dtype() -> None:
    from transformers import LlamaConfig

    assert resolve_dtype("auto", config_dtype(LlamaConfig(dtype="bfloat16"))) is torch.bfloat16
    assert resolve_dtype("auto", config_dtype(LlamaConfig())) is torch.float32


def test_an_unknown_name_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown dtype 'int8'; choose auto, float32, "):
        resolve_dtype("int8")
