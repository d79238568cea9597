"""bench/gateway.py end to end at a tiny size: the scripted LM, the gateway as a process, and
the minimal relay each stream every token the clients asked for, one message per token."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench import gateway
from protos.meshserve.v1 import common_pb2


def test_context_switches_grow_as_a_thread_sleeps_and_is_woken() -> None:
    import os
    import threading

    from bench.proc_cpu import context_switches

    before = context_switches(os.getpid())[0]
    ready = threading.Event()
    for _ in range(20):  # each wait puts this thread to sleep; the set wakes it
        threading.Thread(target=ready.set).start()
        ready.wait()
        ready.clear()
    assert context_switches(os.getpid())[0] > before  # voluntary: it slept, then was woken


def test_a_scripted_step_gives_each_live_request_its_next_token() -> None:
    live = {"a": [0, 2], "b": [1, 2]}
    step = gateway._step(live)
    assert [(o.request_id, o.step.finish_reason) for o in step.outputs] == [
        ("a", 0),
        ("b", common_pb2.FINISH_REASON_LENGTH),  # b has its 2 tokens
    ]
    assert live == {"a": [1, 2]}  # b is done


@pytest.mark.parametrize("relay", [False, True], ids=["gateway", "relay"])
def test_the_bench_streams_every_token(relay: bool, capsys: pytest.CaptureFixture) -> None:
    args = argparse.Namespace(
        streams=3, max_tokens=6, step_ms=2.0, rounds=1, stream_interval=1, relay=relay,
        beside_engine=0, engine_vocab=None,
    )  # fmt: skip
    asyncio.run(gateway.run(args))
    out = capsys.readouterr().out
    assert "CPU per streamed token" in out and "messages per token 1.000" in out
    assert "context switches per token" in out
    assert "beside" not in out


def test_beside_an_engine_the_load_runs_during_the_measure_and_stops(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[asyncio.subprocess.Process] = []
    start = gateway.start_engine_load

    async def recording_start(layers: int, vocab: int | None) -> asyncio.subprocess.Process:
        process = await start(layers, vocab)
        started.append(process)
        return process

    async def measure(address: str, pid: int, args: argparse.Namespace) -> list:
        (load,) = started
        assert load.returncode is None  # busy while the gateway is measured
        return [(1.0, 1.0, 1.0)]

    monkeypatch.setattr(gateway, "start_engine_load", recording_start)
    monkeypatch.setattr(gateway, "measure", measure)
    args = argparse.Namespace(
        streams=2, max_tokens=4, step_ms=2.0, rounds=1, stream_interval=1, relay=True,
        beside_engine=1, engine_vocab=1024,
    )  # fmt: skip
    asyncio.run(gateway.run(args))
    assert started[0].returncode is not None  # stopped with the bench
    assert "beside a busy 1-layer engine" in capsys.readouterr().out
