"""Generic pytest setup shared by every test: offline Hugging Face, tiny model factory."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# One intra-op thread per process (the services these tests start inherit it): the models are
# tiny, and on 2 cores shared by pytest and up to three service processes, torch's default
# OpenMP pool oversubscribes the cores; measured: tests/lm_service/models plus the generic
# multimodal tests took 115 s with the default and 27 s with one thread under load.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from gateway.tools.tiny_models import tiny_model_path  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[str], Path]:
    """Factory: `tiny_model("llama")` is the folder of a cached tiny HF checkpoint."""
    return tiny_model_path
