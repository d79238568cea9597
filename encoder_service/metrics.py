"""The encoder service's Prometheus metrics: embedding cache lookups per modality (named like
vLLM's mm cache metrics), items queued, tower batch sizes and latencies.

The Encoder core exposes counts and a tower-call hook; this module publishes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protos.metrics import E2E_BUCKETS, name

if TYPE_CHECKING:
    from encoder_service.encoder import Encoder

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOWER_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class EncoderCollector(Collector):
    """Reads the encoder's cache stats and queue at each scrape (nothing before it loads)."""

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.encoder: Encoder | None = None

    def collect(self) -> Iterator[Any]:
        encoder = self.encoder
        if encoder is None:
            return
        stats = encoder.cache.stats()
        yield self._family(
            CounterMetricFamily,
            "mm_cache_queries",
            "Media items looked up in the embedding cache.",
            stats.hits + stats.misses,
        )
        yield self._family(
            CounterMetricFamily,
            "mm_cache_hits",
            "Media items found in the embedding cache.",
            stats.hits,
        )
        yield self._family(
            GaugeMetricFamily,
            "num_items_queued",
            "Media items admitted and not yet answered.",
            encoder.num_queued_items,
        )

    def _family(self, kind: type, metric: str, documentation: str, value: float) -> Any:
        family = kind(name(metric), documentation, labels=("modality",))
        family.add_metric((self.modality,), value)
        return family


class EncoderMetrics:
    """Histograms of one encoder service, labelled with its modality."""

    def __init__(self, registry: CollectorRegistry, modality: str) -> None:
        self.modality = modality
        self.collector = EncoderCollector(modality)
        registry.register(self.collector)
        self.batch_size = Histogram(
            name("encoder_batch_size"),
            "Distinct media items per tower call (concurrent requests micro-batched).",
            ("modality",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_latency = Histogram(
            name("encoder_batch_latency_seconds"),
            "Time of one tower call.",
            ("modality",),
            buckets=TOWER_LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_latency = Histogram(
            name("encoder_request_latency_seconds"),
            "Time of one Encode call: queue, decode, tower.",
            ("modality",),
            buckets=E2E_BUCKETS,
            registry=registry,
        )

    def attach(self, encoder: Encoder) -> None:
        """Publishes `encoder`'s stats and tower calls from now on."""
        self.collector.encoder = encoder
        encoder.on_tower_call = self.observe_tower_call

    def observe_tower_call(self, num_items: int, seconds: float) -> None:
        self.batch_size.labels(self.modality).observe(num_items)
        self.batch_latency.labels(self.modality).observe(seconds)

    def time_request(self) -> Any:
        """A context manager timing one Encode call."""
        return self.request_latency.labels(self.modality).time()
