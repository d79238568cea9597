"""Cross-attention blocks of encoder-decoder requests: admission waits for them, finish /
abort / preemption give them back, prefix caching is off, sizes are checked up front."""

from __future__ import annotations

import pytest
import torch

from lm_service.engine.cross_kv_cache import num_encoder_blocks_for
from lm_service.engine.encoder_cache import EncoderCachePool
from lm_service.engine.request import Request, RequestStatus
from lm_service.engine.scheduler import Scheduler, SchedulerConfig
from lm_service.models.base import CrossAttentionSpec
from protos.errors import InvalidRequest, Overloaded
from protos.sampling_params import SamplingParams


def _scheduler(num_encoder_blocks: int, num_blocks: int = 64) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            max_num_batched_tokens=64,
            max_num_seqs=4,
            block_size=4,
            num_blocks=num_blocks,
            max_model_len=256,
            num_encoder_blocks=num_encoder_blocks,
        )
    )


def _request(name: str, enc_len: int = 10, length: int = 4, max_tokens: int = 3) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    states = torch.zeros(enc_len, 8) if enc_len else None
    return Request(name, list(range(1, length + 1)), params, encoder_states=states)


def _sample_all(scheduler: Scheduler) -> list[str]:
    out = scheduler.schedule()
    sampled = {item.request.request_id: (7, None) for item in out.scheduled if item.will_sample}
    return [r.request_id for r in scheduler.update_from_output(out, sampled)]


def test_pool_hands_out_blocks_per_encoder_length() -> None:
    pool = EncoderCachePool(5, block_size=4)
    a, b = _request("a", enc_len=9), _request("b", enc_len=8)  # 3 and 2 blocks
    pool.allocate(a)
    assert len(a.cross_block_ids) == 3 and pool.num_free == 2
    assert pool.can_allocate(b)
    pool.allocate(b)
    assert pool.usage == 1.0 and not set(a.cross_block_ids) & set(b.cross_block_ids)
    pool.free(a)
    pool.free(a)  # twice is harmless
    assert pool.num_free == 3 and a.cross_block_ids == []


def test_admission_waits_for_cross_blocks_and_finish_returns_them() -> None:
    scheduler = _scheduler(num_encoder_blocks=6)  # two requests of 3 blocks
    for name in "abc":
        scheduler.add_request(_request(name))
    out = scheduler.schedule()
    assert [item.request.request_id for item in out.scheduled] == ["a", "b"]
    assert scheduler.stats.encoder_cache_usage == 1.0
    scheduler.update_from_output(out, {"a": (7, None), "b": (7, None)})
    c = scheduler.requests["c"]
    finished = _sample_all(scheduler) + _sample_all(scheduler)  # a and b reach 3 tokens
    assert sorted(finished) == ["a", "b"] and c.status is RequestStatus.WAITING
    _sample_all(scheduler)
    assert c.status is RequestStatus.RUNNING and len(c.cross_block_ids) == 3
    assert not scheduler.block_pool.enable_prefix_caching


def test_abort_and_preemption_free_cross_blocks() -> None:
    scheduler = _scheduler(num_encoder_blocks=6, num_blocks=3)
    a, b = _request("a", max_tokens=8), _request("b", max_tokens=8)
    scheduler.add_request(a)
    scheduler.add_request(b)
    _sample_all(scheduler)
    assert a.cross_block_ids and b.cross_block_ids
    while b.status is RequestStatus.RUNNING:  # 3 KV blocks cannot hold both: b is preempted
        _sample_all(scheduler)
    assert b.status is RequestStatus.PREEMPTED and b.cross_block_ids == []
    scheduler.abort("a")
    assert a.cross_block_ids == [] and scheduler.encoder_pool.num_free == 6


def test_requests_that_never_fit_are_refused_up_front() -> None:
    with pytest.raises(Overloaded, match="need 4 cross-attention blocks; the cache has 3"):
        _scheduler(num_encoder_blocks=3).add_request(_request("a", enc_len=13))
    with pytest.raises(InvalidRequest, match="takes no encoder states"):
        _scheduler(num_encoder_blocks=0).add_request(_request("a"))
    _scheduler(num_encoder_blocks=0).add_request(_request("a", enc_len=0))  # decoder-only


def test_sizing_leaves_room_for_each_request_s_decoder_kv() -> None:
    spec = CrossAttentionSpec(2, 4, 16, torch.float32, 64, max_encoder_len=100)
    per_block = spec.bytes_per_block(16)  # 2 layers * K,V * 16 * 4 * 16 * 4 bytes
    assert per_block == 2 * 2 * 16 * 4 * 16 * 4
    per_request = 7 * per_block  # 100 positions in blocks of 16
    assert num_encoder_blocks_for(spec, 16, 10**9, max_num_seqs=3) == 3 * 7
    # room for 2 requests of cross K/V plus as much decoder KV each, not for 3
    memory = 2 * (per_request + per_request) + per_request
    assert num_encoder_blocks_for(spec, 16, memory, 3, decoder_bytes_per_request=per_request) == 14
    with pytest.raises(InvalidRequest, match="cannot hold one request"):
        num_encoder_blocks_for(spec, 16, per_request + 5, 3, decoder_bytes_per_request=10)
    assert num_encoder_blocks_for(None, 16, 0, 3) == 0
