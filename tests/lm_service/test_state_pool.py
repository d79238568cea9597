"""The scheduler's recurrent state slots: admission waits for a slot, finish / abort /
preemption give it back, prefix caching is off."""

from __future__ import annotations

import pytest
import torch

from lm_service.engine.request import Request
from lm_service.engine.scheduler import Scheduler, SchedulerConfig
from lm_service.engine.state_cache import num_state_slots_for
from lm_service.engine.state_pool import StatePool
from lm_service.models.base import StateCacheSpec
from protos.errors import InvalidRequest
from protos.sampling_params import SamplingParams


def _scheduler(num_state_slots: int, num_blocks: int = 64) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            max_num_batched_tokens=64,
            max_num_seqs=4,
            block_size=4,
            num_blocks=num_blocks,
            max_model_len=256,
            num_state_slots=num_state_slots,
        )
    )


def _request(name: str, length: int = 6, max_tokens: int = 3) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return Request(name, list(range(1, length + 1)), params)


def _sample_all(scheduler: Scheduler) -> list[str]:
    out = scheduler.schedule()
    sampled = {item.request.request_id: (7, None) for item in out.scheduled if item.will_sample}
    finished = scheduler.update_from_output(out, sampled)
    return [request.request_id for request in finished]


def test_pool_hands_out_and_takes_back_slots() -> None:
    pool = StatePool(2)
    a, b, c = _request("a"), _request("b"), _request("c")
    pool.allocate(a)
    pool.allocate(b)
    assert {a.state_slot, b.state_slot} == {0, 1}
    assert not pool.can_allocate(c) and pool.usage == 1.0
    pool.free(a)
    assert pool.can_allocate(c)
    pool.allocate(c)
    assert c.state_slot == 0 and a.state_slot is None
    pool.free(a)  # freeing twice is harmless
    assert pool.num_free == 0


def test_attention_only_models_need_no_slot() -> None:
    pool = StatePool(0)
    request = _request("a")
    assert pool.can_allocate(request)
    pool.allocate(request)
    assert request.state_slot is None


def test_admission_waits_for_a_free_slot() -> None:
    scheduler = _scheduler(num_state_slots=2)
    for name in "abc":
        scheduler.add_request(_request(name, max_tokens=1 if name == "a" else 3))
    out = scheduler.schedule()
    assert [item.request.request_id for item in out.scheduled] == ["a", "b"]
    assert scheduler.num_waiting == 1  # max_num_seqs is 4, but only 2 slots exist
    scheduler.update_from_output(out, {"a": (7, None), "b": (7, None)})  # a finishes
    out = scheduler.schedule()
    assert [item.request.request_id for item in out.scheduled] == ["b", "c"]
    assert out.scheduled[1].request.state_slot is not None


def test_abort_finish_and_preemption_free_slots() -> None:
    scheduler = _scheduler(num_state_slots=2)
    a, b = _request("a"), _request("b")
    scheduler.add_request(a)
    scheduler.add_request(b)
    scheduler.schedule()
    assert scheduler.state_pool.num_free == 0
    scheduler.abort("a")
    assert (scheduler.state_pool.num_free, a.state_slot) == (1, None)
    scheduler._preempt(scheduler.running.pop())
    assert (scheduler.state_pool.num_free, b.state_slot) == (2, None)
    while scheduler.has_unfinished():
        _sample_all(scheduler)
    assert scheduler.state_pool.num_free == 2


def test_preemption_under_block_pressure_gives_the_slot_back() -> None:
    # 5 blocks of 4 tokens: two 8-token prompts fill 4; growing both needs a 6th block
    scheduler = _scheduler(num_state_slots=2, num_blocks=5)
    scheduler.add_request(_request("a", length=8, max_tokens=8))
    scheduler.add_request(_request("b", length=8, max_tokens=8))
    while scheduler.num_preemptions == 0:
        _sample_all(scheduler)
    victim = scheduler.waiting[0]
    assert victim.state_slot is None and victim.num_computed_tokens == 0
    assert scheduler.state_pool.num_free == 1


def test_prefix_caching_is_forced_off_with_state_slots() -> None:
    assert not _scheduler(num_state_slots=2).block_pool.enable_prefix_caching
    assert _scheduler(num_state_slots=0).block_pool.enable_prefix_caching


def test_slot_sizing_and_the_sentence_when_none_fits() -> None:
    spec = StateCacheSpec(2, (8, 3), (8, 4), conv_dtype=torch.float32)
    assert spec.bytes_per_slot == 2 * (24 + 32) * 4
    assert num_state_slots_for(None, 1 << 20, 4) == 0
    assert num_state_slots_for(spec, 1 << 20, 4) == 4
    assert num_state_slots_for(spec, 3 * spec.bytes_per_slot, 4) == 3
    with pytest.raises(InvalidRequest, match="no recurrent state slot"):
        num_state_slots_for(spec, spec.bytes_per_slot - 1, 4)
