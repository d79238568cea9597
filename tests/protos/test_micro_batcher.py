"""MicroBatcher on its own: shared batches, bounded waits, isolated failures, close."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from protos.errors import Unavailable
from protos.micro_batcher import MicroBatcher


class _Recorder:
    """run_batch that doubles numbers, records each batch, and fails on negative items."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s

    def __call__(self, items: list[int]) -> list[int]:
        time.sleep(self.delay_s)
        if any(item < 0 for item in items):
            raise ValueError("negative item")
        self.batches.append(list(items))
        return [2 * item for item in items]


def _submit_concurrently(batcher: MicroBatcher, requests: list[list[int]]) -> list:
    """Each caller announces itself, meets the others, then submits."""
    barrier = threading.Barrier(len(requests))

    def call(items: list[int]):
        with batcher.incoming() as ticket:
            barrier.wait()
            try:
                return ticket.submit(items)
            except Exception as error:
                return error

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(call, requests))


def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    recorder = _Recorder()
    batcher = MicroBatcher(recorder, max_batch_size=64, max_wait_s=0.05)
    requests = [[10 * i + j for j in range(i % 3 + 1)] for i in range(8)]
    results = _submit_concurrently(batcher, requests)
    batcher.close()
    assert results == [[2 * item for item in request] for request in requests]
    assert len(recorder.batches) < 8 and batcher.num_batches == len(recorder.batches)
    assert sorted(x for batch in recorder.batches for x in batch) == sorted(sum(requests, []))


def test_a_lone_caller_does_not_wait() -> None:
    batcher = MicroBatcher(_Recorder(), max_wait_s=1.0)
    start = time.perf_counter()
    with batcher.incoming() as ticket:
        assert ticket.submit([1]) == [2]
    assert batcher.submit([2]) == [4]
    assert time.perf_counter() - start < 0.5
    batcher.close()


def test_a_batch_waits_for_announced_callers_but_not_forever() -> None:
    recorder = _Recorder()
    batcher = MicroBatcher(recorder, max_wait_s=2.0)
    announced = threading.Event()

    def slow_caller() -> list[int]:
        with batcher.incoming() as ticket:
            announced.set()
            time.sleep(0.1)  # still preprocessing when the other request arrives
            return ticket.submit([10])

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(slow_caller)
        announced.wait()
        assert batcher.submit([1]) == [2]
        assert slow.result() == [20]
    assert recorder.batches == [[1, 10]]  # waited for the announced caller: one batch

    quick = MicroBatcher(_Recorder(), max_wait_s=0.05)
    with quick.incoming():  # announced, never submits: others wait max_wait_s at most
        start = time.perf_counter()
        assert quick.submit([3]) == [6]
        assert time.perf_counter() - start < 1.0
    quick.close()
    batcher.close()


def test_batches_stop_growing_at_max_batch_size() -> None:
    recorder = _Recorder(delay_s=0.01)
    batcher = MicroBatcher(recorder, max_batch_size=4, max_wait_s=0.05)
    results = _submit_concurrently(batcher, [[i] for i in range(12)])
    batcher.close()
    assert results == [[2 * i] for i in range(12)]
    assert max(len(batch) for batch in recorder.batches) <= 4
    assert len(recorder.batches) >= 3


def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    recorder = _Recorder()
    batcher = MicroBatcher(recorder, max_batch_size=64, max_wait_s=0.05)
    results = _submit_concurrently(batcher, [[1], [-1], [3]])
    batcher.close()
    assert results[0] == [2] and results[2] == [6]
    assert isinstance(results[1], ValueError)


def test_a_lone_caller_gets_its_error() -> None:
    batcher = MicroBatcher(_Recorder(), max_wait_s=0.0)
    with pytest.raises(ValueError, match="negative"):
        batcher.submit([-5])
    assert batcher.submit([]) == []
    batcher.close()


def test_closed_batcher_refuses_work() -> None:
    batcher = MicroBatcher(_Recorder())
    assert batcher.submit([1, 2]) == [2, 4]
    batcher.close()
    with pytest.raises(Unavailable):
        batcher.submit([1])
