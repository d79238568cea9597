"""Generic pytest setup shared by every test: offline Hugging Face, tiny model factory."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from gateway.tools.tiny_models import tiny_model_path  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[str], Path]:
    """Factory: `tiny_model("llama")` is the folder of a cached tiny HF checkpoint."""
    return tiny_model_path
