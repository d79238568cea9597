"""--kv-cache-memory is honoured: what the engine allocates fits the budget (within 5%, never
above), and the device really holds it (RSS on CPU, the CUDA allocator's peak on GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gateway.tools.tiny_models import tiny_model_path
from lm_service import Engine, EngineConfig
from lm_service.engine.cache_memory import CacheMemory, tensors_nbytes

BUDGET = 48 << 20  # large against the tiny model (~1 MiB), so RSS noise stays far below 5%
TOLERANCE = 0.05  # the bar
ROOT = Path(__file__).resolve().parents[3]


def _engine(device: str, budget: int = BUDGET, max_num_seqs: int = 512) -> Engine:
    # 512 sequences x 512 positions x 512 bytes per token = 128 MiB: the budget binds
    config = EngineConfig(
        model=str(tiny_model_path("llama")),
        device=device,
        block_size=16,
        kv_cache_memory=budget,
        max_num_seqs=max_num_seqs,
    )
    return Engine(config)


def _check_within_budget(report: CacheMemory) -> None:
    assert not report.is_capped
    assert (1 - TOLERANCE) * BUDGET <= report.allocated <= BUDGET
    assert report.measured is not None
    assert abs(report.measured_ratio - 1) <= TOLERANCE, report.describe()


_FRESH_PROCESS = """
import dataclasses, json
from lm_service.engine.cache_memory import resident_bytes
from tests.lm_service.engine.test_cache_memory import _engine
before = resident_bytes()
engine = _engine("cpu")
kv = [t for pair in engine.runner.kv_caches for t in pair]
spec = engine.loaded.model.kv_cache_spec()
print(json.dumps({
    "report": dataclasses.asdict(engine.cache_memory),
    "grown": resident_bytes() - before,
    "kv_nbytes": sum(t.nbytes for t in kv),
    "per_token": spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * 4,
    "num_blocks": engine.num_blocks,
}))
"""


def test_the_kv_cache_is_resident_and_fills_its_budget() -> None:
    # NOTE: in a fresh process, as a service builds its engine: in this long-lived one, malloc
    # hands out pages earlier tests freed and left resident, and RSS cannot grow by the cache
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    facts = json.loads(result.stdout.splitlines()[-1])
    report = CacheMemory(**facts["report"])
    _check_within_budget(report)
    # a cache made by torch.empty would be allocated but not resident: grown ~ the model only
    assert facts["grown"] >= (1 - TOLERANCE) * report.allocated
    assert report.allocated == facts["kv_nbytes"]
    assert report.kv_bytes_per_token == facts["per_token"]
    assert report.num_blocks == facts["num_blocks"] == report.allocated // (facts["per_token"] * 16)


def test_a_budget_past_what_requests_can_use_is_reported_as_capped() -> None:
    report = _engine("cpu", budget=64 << 30, max_num_seqs=2).cache_memory  # 2 x 512 tokens
    assert report.is_capped
    assert report.num_blocks * report.block_size == 2 * 512
    assert report.allocated == report.num_blocks * report.block_size * report.kv_bytes_per_token


def test_a_view_shares_its_storage_and_is_counted_once() -> None:
    keys = torch.zeros(4, 8)
    assert tensors_nbytes([keys, keys[:, :2], torch.zeros(3)]) == keys.nbytes + 12


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_kv_cache_fills_its_budget_on_cuda() -> None:
    _check_within_budget(_engine("cuda").cache_memory)
