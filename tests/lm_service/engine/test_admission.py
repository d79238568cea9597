"""Admission control of one LM engine: a bound on waiting requests (--max-queued-requests);
past it a new request is refused with the numbers; the defaults take 200 concurrent streams."""

from __future__ import annotations

import pytest

from gateway.tools.cli import build_parser
from lm_service.engine.scheduler import Scheduler
from protos.errors import Overloaded
from tests.lm_service.engine.test_scheduler import FakeModel, make_config, make_request, prompt
from tests.lm_service.engine.test_scheduler import run_until_done as run


def test_a_request_past_the_bound_is_refused_with_the_numbers() -> None:
    scheduler = Scheduler(make_config(max_num_seqs=1, max_queued_requests=2))
    scheduler.add_request(make_request("a", prompt(4)))
    scheduler.add_request(make_request("b", prompt(4)))
    expected = (
        r"the LM's queue is full: 2 requests are waiting and 0 are running "
        r"\(--max-queued-requests 2\); retry shortly or add LM replicas"
    )
    with pytest.raises(Overloaded, match=expected):
        scheduler.add_request(make_request("c", prompt(4)))
    assert "c" not in scheduler.requests
    scheduler.schedule()  # "a" starts running: a place in the queue is free again
    scheduler.add_request(make_request("c", prompt(4)))
    assert scheduler.num_waiting == 2 and scheduler.num_running == 1


def test_no_bound_by_default_in_the_core() -> None:
    scheduler = Scheduler(make_config())
    for index in range(300):
        scheduler.add_request(make_request(f"r{index}", prompt(4)))
    assert scheduler.num_waiting == 300


def test_the_lm_defaults_serve_200_concurrent_streams() -> None:
    args = build_parser().parse_args(["lm", "--model", "m"])
    config = make_config(
        max_num_seqs=args.max_num_seqs,
        max_queued_requests=args.max_queued_requests,
        num_blocks=2048,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    scheduler = Scheduler(config)
    requests = [make_request(f"r{index}", prompt(8, start=index)) for index in range(200)]
    for request in requests:
        scheduler.add_request(request)
    run(scheduler, FakeModel(config))
    assert all(request.num_output_tokens == 4 for request in requests)
