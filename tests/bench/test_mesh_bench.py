"""bench/mesh.py's pieces: its rounds' requests, pooling rounds, and the in-process baseline
run as a fresh `python -m bench.mesh_engine` (the bench itself is not run in tests)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from bench.mesh import ROOT, service_env
from bench.mesh_engine import RESULT_PREFIX
from bench.mesh_stats import RunStats, engine_cpu_share, merged
from bench.mesh_workload import IMAGE_PLACEHOLDER, Workload, make_workload
from gateway.tools.tiny_models import tiny_model_path

SIDE = 56  # the tiny Qwen2-VL processor's smallest image: 4 image tokens


def _args(workload: str) -> argparse.Namespace:
    shape = dict(streams=3, prompt_len=12, batch1=2, batch1_prompt=6, max_tokens=4)
    return argparse.Namespace(workload=workload, **shape)


def _workload(model: str, kind: str, round_index: int = 0) -> Workload:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path(model))
    return make_workload(tokenizer, _args(kind), round_index, SIDE)


def test_rounds_draw_new_requests_that_survive_json() -> None:
    first, second = _workload("qwen2", "text", 0), _workload("qwen2", "text", 1)
    assert Workload.from_json(first.to_json()) == first
    texts = [r.text for r in (first.warmup, *first.streams, *first.batch1)]
    assert len(set(texts)) == len(texts)  # no request served from another's prefix cache
    assert not set(texts) & {r.text for r in second.streams}  # nor from the last round's
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path("qwen2"))
    for request in first.streams:
        assert request.prompt_ids == tokenizer(request.text, add_special_tokens=False)["input_ids"]


def test_image_requests_hold_one_placeholder_and_their_own_image() -> None:
    workload = _workload("qwen2_vl", "image")
    requests = (workload.warmup, *workload.streams, *workload.batch1)
    assert all(r.text.count("<|image_pad|>") == 1 for r in requests)
    assert all(r.text.startswith(IMAGE_PLACEHOLDER) for r in requests)
    assert len({r.image_png for r in requests}) == len(requests)  # no encoder cache hit
    assert requests[0].image_png.startswith(b"\x89PNG")


def test_rounds_pool_by_tokens() -> None:
    a = RunStats(
        num_tokens=10, wall_s=1.0, ttft_s=[0.1], cpu_s={"lm": 1.0}, switches={"lm": [4, 1]}
    )
    b = RunStats(
        num_tokens=30, wall_s=1.0, ttft_s=[0.3], cpu_s={"lm": 2.0}, switches={"lm": [6, 2]}
    )
    pooled = merged([a, b])
    assert pooled.tokens_per_s == 20.0 and pooled.ttft_s == [0.1, 0.3]
    assert pooled.cpu_s == {"lm": 3.0} and pooled.switches == {"lm": [10, 3]}
    assert RunStats.from_json(pooled.to_json()) == pooled  # as bench.mesh_engine hands it over


def test_the_engines_cpu_share_counts_whole_processes_and_the_client_once() -> None:
    mesh = RunStats(
        num_tokens=200,
        cpu_s={"lm": 1.6, "  lm engine loop": 1.5, "gateway": 0.3, "bench client": 0.1},
    )
    # the engine loop's 1.5 s of the 1.6 + 0.3 + 0.1 s that the processes took
    assert engine_cpu_share(mesh) == pytest.approx(0.75)


@pytest.mark.parametrize(("model", "kind"), [("qwen2", "text"), ("qwen2_vl", "image")])
def test_the_baseline_runs_in_a_fresh_process(model: str, kind: str) -> None:
    workload = _workload(model, kind)
    engine = dict(max_num_seqs=8, max_num_batched_tokens=256, kv_cache_memory=4 << 20)
    job = {"model": str(tiny_model_path(model)), "engine": engine, "workload": workload.to_json()}
    done = subprocess.run(
        [sys.executable, "-m", "bench.mesh_engine"],
        input=json.dumps(job), capture_output=True, text=True, env=service_env(), cwd=ROOT,
        timeout=300,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    stats = RunStats.from_json(lines[0][len(RESULT_PREFIX) :])
    assert stats.num_tokens == 3 * 4 and stats.num_requests == 3  # ignore_eos: all of them
    assert len(stats.ttft_s) == len(stats.itl_s) == 3 and len(stats.batch1_ttft_s) == 2
    assert "bytes per token" in stats.kv_memory


def test_a_services_ttft_histogram_is_read_from_its_metrics_port() -> None:
    """bench/mesh.py's batch-1 layers: (sum, count) of a service's TTFT histogram, read from
    the /metrics it serves, over a run of free consecutive ports as `up --metrics-port` takes."""
    import socket

    from prometheus_client import CollectorRegistry, start_http_server

    from bench.mesh import ttft_histogram
    from protos.metrics import StreamMetrics
    from protos.ports import free_port_run

    first = free_port_run(3)
    for port in range(first, first + 3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free, all three
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)
    metrics.time_to_first_token.observe(0.25)
    metrics.time_to_first_token.observe(0.5)
    server, thread = start_http_server(first, addr="127.0.0.1", registry=registry)
    try:
        assert ttft_histogram(first) == (0.75, 2.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_cpu_report_gives_each_services_context_switches_per_token(
    capsys: pytest.CaptureFixture,
) -> None:
    from bench.mesh import report_cpu

    ours = RunStats(num_tokens=100, cpu_s={"engine process": 0.5})
    mesh = RunStats(
        num_tokens=200,
        wall_s=1.0,
        cpu_s={"gateway": 0.02},
        switches={"gateway": [300, 100], "lm": [40, 10]},
    )
    report_cpu(ours, mesh)
    out = capsys.readouterr().out
    assert (
        "context switches per streamed token" in out
        and "gateway 1.50 woken + 0.50 preempted, lm 0.20 woken + 0.05" in out
    )
