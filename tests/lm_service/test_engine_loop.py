"""The engine loop thread: it outlives failing commands and vanished readers, and a request
cancelled while it is being added is still aborted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from gateway.tools.tiny_models import tiny_model_path
from lm_service import Engine, EngineConfig, SamplingParams
from lm_service.engine_loop import EngineLoop, RequestStream, stream_outputs

LONG = SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def loop() -> Iterator[EngineLoop]:
    engine = Engine(EngineConfig(model=str(tiny_model_path("llama")), block_size=4, num_blocks=128))
    loop = EngineLoop(engine).start()
    yield loop
    loop.stop()


def _idle(loop: EngineLoop, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not loop.call(lambda engine: engine.has_unfinished()):
            return True
        time.sleep(0.02)
    return False


class GoneReader(RequestStream):
    def put(self, item: object) -> None:
        raise RuntimeError("Event loop is closed")


def test_a_vanished_reader_aborts_its_request_and_the_loop_goes_on(loop: EngineLoop) -> None:
    loop.submit("gone", [1, 2, 3], LONG, stream=GoneReader("gone"))
    assert _idle(loop)
    tokens = [
        t
        for out in loop.submit("ok", [1, 2, 3], SamplingParams(max_tokens=5))
        for t in out.new_token_ids
    ]
    assert len(tokens) == 5


def test_a_failing_command_reaches_its_caller_only(loop: EngineLoop) -> None:
    with pytest.raises(ZeroDivisionError):
        loop.call(lambda engine: 1 / 0)
    assert loop.call(lambda engine: engine.num_blocks) == 128


class SlowHandoff(EngineLoop):
    """The executor thread reaches the engine late: the window where a cancel could race."""

    def submit(self, *args: object, **kwargs: object) -> RequestStream:
        time.sleep(0.2)
        return super().submit(*args, **kwargs)


def test_cancel_while_submitting_still_aborts(loop: EngineLoop) -> None:
    slow = SlowHandoff(loop.engine)
    slow._commands, slow._streams = loop._commands, loop._streams  # the running loop's thread

    async def cancel_at_once() -> None:
        async def consume() -> None:
            async for _ in stream_outputs(slow, "victim", [1, 5, 6], LONG):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)  # the task is inside asyncio.to_thread(loop.submit, ...)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # 0.2 s after the cancel the add lands; soon after, the abort must have followed it
        # (checked while this event loop runs: a closed loop would abort the orphan through
        # the vanished-reader path and hide the race)
        await asyncio.sleep(0.35)
        assert not await asyncio.to_thread(loop.call, lambda engine: engine.has_unfinished())

    asyncio.run(cancel_at_once())
    free = loop.call(lambda engine: engine.scheduler.block_pool.num_free_blocks)
    assert free == 128


def test_one_wake_up_of_the_event_loop_per_step_not_per_token(loop: EngineLoop) -> None:
    """Counters, not clocks: N concurrent streams wake their reader's event loop about once
    per engine step (plus the hand-over of each submit), not once per token per request."""
    num_requests, max_tokens = 8, 12
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def run() -> tuple[int, int, int]:
        event_loop = asyncio.get_running_loop()
        wake_ups = 0
        call_soon_threadsafe = event_loop.call_soon_threadsafe

        def counted(*args: object, **kwargs: object) -> object:
            nonlocal wake_ups
            wake_ups += 1
            return call_soon_threadsafe(*args, **kwargs)

        event_loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        steps0 = loop.engine.counters.num_steps

        async def consume(i: int) -> int:
            stream = stream_outputs(loop, f"wake-{i}", [1, 30 + i, 31], params)
            return sum([len(o.new_token_ids) async for outs in stream for o in outs])

        tokens = await asyncio.gather(*(consume(i) for i in range(num_requests)))
        return sum(tokens), wake_ups, loop.engine.counters.num_steps - steps0

    num_tokens, wake_ups, num_steps = asyncio.run(run())
    assert num_tokens == num_requests * max_tokens
    assert wake_ups <= num_steps + 2 * num_requests < num_tokens
