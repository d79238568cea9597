"""The LM service's Prometheus metrics: the engine's own counts, published at each scrape.

The engine exposes plain stats (`Scheduler.stats`); this module turns them into metrics named
like vLLM's. The engine imports nothing of Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protos.metrics import StreamMetrics, name

StatsSource = Callable[[], Any]  # the engine's SchedulerStats now, or None (not loaded, pooling)


class EngineCollector(Collector):
    """Reads the engine's stats at each scrape.

    NOTE: read from the scrape's thread while the engine thread runs: each number is a plain
    int or float read once, so a scrape sees each value as of some moment of the step.
    """

    def __init__(self, stats: StatsSource) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        if stats is None:
            return
        yield _gauge("num_requests_running", "Requests in the running batch.", stats.num_running)
        yield _gauge("num_requests_waiting", "Requests waiting to run.", stats.num_waiting)
        yield _gauge(
            "kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).", stats.kv_cache_usage
        )
        yield _counter(
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            stats.prefix_cache_query_tokens,
        )
        yield _counter(
            "prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            stats.prefix_cache_hit_tokens,
        )
        yield _counter(
            "num_preemptions", "Requests preempted (KV blocks ran out).", stats.num_preemptions
        )


def _gauge(metric: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name(metric), documentation, value=value)


def _counter(metric: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name(metric), documentation, value=value)


def lm_metrics(registry: CollectorRegistry, stats: StatsSource) -> StreamMetrics:
    """Registers the engine's stats and the request histograms; returns the histograms."""
    registry.register(EngineCollector(stats))
    return StreamMetrics(registry, count_running=False)
