"""Prometheus metrics every service shares: the /metrics endpoint, refusals by status code,
and request latency histograms named like vLLM's.

Each service owns one `CollectorRegistry` (no global registry): the server adds its refusal
counter to it, the service layer its own metrics and collectors. Cores import none of this;
they expose counts and stats that a service layer publishes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "meshserve:"
# vLLM's buckets for the same histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


def name(metric: str) -> str:
    """ "num_requests_running" -> "meshserve:num_requests_running"."""
    return PREFIX + metric


class MetricsEndpoint:
    """Serves one registry as Prometheus text over HTTP (any path) on a daemon thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.port = 0
        self._server: Any = None

    def start(self, host: str, port: int) -> int:
        """Binds `host:port` (0: any free port) and serves; returns the bound port."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        self.port = int(self._server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def refusal_counter(registry: CollectorRegistry) -> Callable[[str, Any], None]:
    """`meshserve:refused_requests_total{method, code}`; returns the StatusInterceptor hook."""
    counter = Counter(
        name("refused_requests"),
        "Calls ended with an error status, by gRPC method and status code.",
        ("method", "code"),
        registry=registry,
    )

    def on_status(method: str, code: Any) -> None:
        counter.labels(method=method, code=getattr(code, "name", str(code))).inc()

    return on_status


class StreamMetrics:
    """Latency histograms and finish counts of generation streams, as vLLM names them.

    Args:
        registry: the service's registry.
        count_running: also keep `meshserve:num_requests_running` (streams open now); off
            where the service publishes its own (the LM's scheduler).
    """

    def __init__(self, registry: CollectorRegistry, count_running: bool = True) -> None:
        self.num_running = None
        if count_running:
            self.num_running = Gauge(
                name("num_requests_running"), "Streams in progress.", registry=registry
            )
        self.time_to_first_token = Histogram(
            name("time_to_first_token_seconds"),
            "Time from the request's arrival to its first token.",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            name("inter_token_latency_seconds"),
            "Time between two tokens of one request.",
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.e2e_request_latency = Histogram(
            name("e2e_request_latency_seconds"),
            "Time from the request's arrival to its end.",
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.request_success = Counter(
            name("request_success"),
            "Requests that ended, by finish reason (stop, length, abort, ...).",
            ("finished_reason",),
            registry=registry,
        )
        self.generation_tokens = Counter(
            name("generation_tokens"), "Tokens generated.", registry=registry
        )

    @contextlib.contextmanager
    def stream(self) -> Iterator[RequestTracker]:
        """Tracks one stream for the `with` block: a stream that ends without a finish reason
        (closed early, cancelled) counts as "abort"; one that fails with an error counts
        in no finish reason (its status is counted as a refusal)."""
        tracker = RequestTracker(self)
        if self.num_running is not None:
            self.num_running.inc()
        try:
            yield tracker
        except Exception:
            tracker.discard()
            raise
        finally:
            tracker.finish(None)
            if self.num_running is not None:
                self.num_running.dec()


class RequestTracker:
    """Times one stream: call `on_tokens` as tokens arrive and `finish` once at the end."""

    def __init__(self, metrics: StreamMetrics, clock: Callable[[], float] = time.monotonic):
        self._metrics = metrics
        self._clock = clock
        self._started = self._last = clock()
        self._num_tokens = 0
        self._finished = False
        self._lock = threading.Lock()

    def on_tokens(self, num_tokens: int, finish_reason: str | None = None) -> None:
        """`num_tokens` new tokens arrived together (several engine steps may have run); the
        last message of the stream carries its finish reason."""
        if num_tokens > 0:
            self._count_tokens(num_tokens)
        if finish_reason:
            self.finish(finish_reason)

    def _count_tokens(self, num_tokens: int) -> None:
        now = self._clock()
        if self._num_tokens == 0:
            self._metrics.time_to_first_token.observe(now - self._started)
        else:  # NOTE: the tokens of one message share its interval evenly
            for _ in range(num_tokens):
                self._metrics.inter_token_latency.observe((now - self._last) / num_tokens)
        self._metrics.generation_tokens.inc(num_tokens)
        self._num_tokens += num_tokens
        self._last = now

    def finish(self, reason: str | None) -> None:
        """Counts the request's end once (later calls are no-ops); None counts as "abort"."""
        if not self._take_end():
            return
        self._metrics.e2e_request_latency.observe(self._clock() - self._started)
        self._metrics.request_success.labels(finished_reason=reason or "abort").inc()

    def discard(self) -> None:
        """The stream failed: count no finish for it."""
        self._take_end()

    def _take_end(self) -> bool:
        with self._lock:
            was_open, self._finished = not self._finished, True
        return was_open
