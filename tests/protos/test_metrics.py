"""Shared metrics: stream timing (TTFT, inter-token latency, finish reasons), and the HTTP
endpoint scraped with a real client and parsed with prometheus_client's parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from protos.metrics import MetricsEndpoint, RequestTracker, StreamMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_tracker_times_first_token_gaps_and_end() -> None:
    registry = CollectorRegistry()
    clock = Clock()
    tracker = RequestTracker(StreamMetrics(registry), clock)
    clock.now += 0.5
    tracker.on_tokens(1)  # TTFT 0.5 s
    clock.now += 0.2
    tracker.on_tokens(2)  # two tokens in one message: 0.1 s each
    clock.now += 0.1
    tracker.on_tokens(1, "length")
    tracker.finish("stop")  # a second end is not counted
    ttft = "meshserve:time_to_first_token_seconds"
    assert _value(registry, f"{ttft}_sum") == pytest.approx(0.5)
    assert _value(registry, "meshserve:inter_token_latency_seconds_count") == 3
    assert _value(registry, "meshserve:inter_token_latency_seconds_sum") == pytest.approx(0.3)
    assert _value(registry, "meshserve:e2e_request_latency_seconds_sum") == pytest.approx(0.8)
    assert _value(registry, "meshserve:generation_tokens_total") == 4
    success = "meshserve:request_success_total"
    assert _value(registry, success, finished_reason="length") == 1
    assert _value(registry, success, finished_reason="stop") is None


def test_streams_closed_early_count_as_abort_and_failures_not_at_all() -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)
    with metrics.stream() as tracker:
        tracker.on_tokens(1)
        assert _value(registry, "meshserve:num_requests_running") == 1
    with pytest.raises(RuntimeError), metrics.stream():
        raise RuntimeError("backend down")
    assert _value(registry, "meshserve:request_success_total", finished_reason="abort") == 1
    assert _value(registry, "meshserve:e2e_request_latency_seconds_count") == 1
    assert _value(registry, "meshserve:num_requests_running") == 0


def test_endpoint_serves_prometheus_text_over_http() -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry, count_running=False)
    metrics.request_success.labels(finished_reason="stop").inc()
    endpoint = MetricsEndpoint(registry)
    port = endpoint.start("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        endpoint.stop()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert "meshserve:num_requests_running" not in families
    (sample,) = families["meshserve:request_success"].samples[:1]
    assert sample.labels == {"finished_reason": "stop"} and sample.value == 1.0
    assert families["meshserve:time_to_first_token_seconds"].type == "histogram"


def test_endpoint_names_a_port_in_use() -> None:
    first = MetricsEndpoint(CollectorRegistry())
    port = first.start("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            MetricsEndpoint(CollectorRegistry()).start("127.0.0.1", port)
    finally:
        first.stop()
