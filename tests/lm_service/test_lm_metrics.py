"""The LM service publishes the engine's stats under vLLM's names, read at each scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lm_service.engine.scheduler import Scheduler
from lm_service.metrics import lm_metrics
from tests.lm_service.engine.test_scheduler import FakeModel, make_config, make_request, prompt


def _scrape(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_engine_stats_are_published_at_each_scrape() -> None:
    config = make_config(max_num_seqs=1)
    scheduler = Scheduler(config)
    registry = CollectorRegistry()
    lm_metrics(registry, lambda: scheduler.stats)
    for name in ("a", "b"):
        scheduler.add_request(make_request(name, prompt(8)))  # the same prompt: a prefix hit
    model = FakeModel(config)
    output = scheduler.schedule()
    scheduler.update_from_output(output, model.step(output))
    values = _scrape(registry)
    assert values["meshserve:num_requests_running"] == 1
    assert values["meshserve:num_requests_waiting"] == 1
    assert 0 < values["meshserve:kv_cache_usage_perc"] <= 1
    assert values["meshserve:prefix_cache_queries_total"] == 8
    assert values["meshserve:num_preemptions_total"] == 0
    while scheduler.has_unfinished():
        output = scheduler.schedule()
        scheduler.update_from_output(output, model.step(output))
    values = _scrape(registry)
    assert values["meshserve:prefix_cache_hits_total"] == 4  # "b" found "a"'s first block
    assert values["meshserve:num_requests_running"] == 0


def test_nothing_engine_side_before_the_engine_loads() -> None:
    registry = CollectorRegistry()
    lm_metrics(registry, lambda: None)
    values = _scrape(registry)
    assert "meshserve:num_requests_running" not in values
    assert "meshserve:time_to_first_token_seconds_count" in values
