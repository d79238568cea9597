"""The orchestrator against fake backends: ids, deadlines, stop strings, usage, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gateway.backends.base import EncoderBackend, LMBackend, LMInfo, LMRequest
from gateway.pipeline.media_store import MediaStore
from gateway.pipeline.orchestrator import Orchestrator, ServedModel
from gateway.pipeline.types import GenerationRequest, MediaInput
from gateway.prompt.builder import PromptBuilder
from gateway.rules.spec_table import spec_for
from gateway.tools.tiny_models import tiny_model_path  # noqa: E402
from protos.encoder_messages import EncodeResult
from protos.lm_messages import StepOutput
from protos.sampling_params import SamplingParams


class FakeLM(LMBackend):
    """Streams the token ids of `script` one step at a time."""

    def __init__(self, script: Sequence[int], delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay
        self.request_ids: list[str] = []
        self.closed_early: list[str] = []

    async def info(self) -> LMInfo:
        return LMInfo("LlamaForCausalLM", "native", 512, 64, 448, False, 16, 64)

    async def generate(
        self, request: LMRequest, timeout: float | None = None
    ) -> AsyncIterator[StepOutput]:
        self.request_ids.append(request.request_id)
        sent = 0
        try:
            for i, token in enumerate(self.script):
                await asyncio.sleep(self.delay)
                last = i == len(self.script) - 1
                sent += 1
                yield StepOutput(
                    request.request_id,
                    (token,),
                    (),
                    "length" if last else None,
                    len(request.prompt_token_ids),
                    0,
                )
        finally:
            if sent < len(self.script):
                self.closed_early.append(request.request_id)


class SlowEncoder(EncoderBackend):
    def modalities(self) -> frozenset[str]:
        return frozenset({"image"})

    async def encode(
        self, modality: str, items: Sequence[Any], timeout: float | None = None
    ) -> list[Any]:
        await asyncio.wait_for(asyncio.sleep(10), timeout)
        return []


def _orchestrator(
    lm: LMBackend,
    encoders: EncoderBackend | None = None,
    name: str = "llama",
    stream_interval: int = 1,
) -> Orchestrator:
    path = str(tiny_model_path(name))
    prompts = PromptBuilder.from_pretrained(path)
    arch = prompts.architecture
    served = ServedModel(
        path, arch, "generate", spec_for(arch), {"image": 1, "video": 0, "audio": 0}
    )
    return Orchestrator(
        served, prompts, encoders or SlowEncoder(), lm, MediaStore(), stream_interval
    )


def _run(orchestrator: Orchestrator, request: GenerationRequest) -> list[Any]:
    async def collect() -> list[Any]:
        return [chunk async for chunk in orchestrator.generate(request)]

    return asyncio.run(collect())


def _request(prompt: str = "Hello", request_id: str = "r", **sampling: Any) -> GenerationRequest:
    return GenerationRequest(request_id, SamplingParams(**sampling), prompt=prompt)


def test_text_usage_and_finish() -> None:
    tokenizer = PromptBuilder.from_pretrained(str(tiny_model_path("llama"))).tokenizer
    script = tokenizer.encode("hello world and more", add_special_tokens=False)
    chunks = _run(_orchestrator(FakeLM(script)), _request())
    assert "".join(c.text for c in chunks) == tokenizer.decode(script)
    last = chunks[-1]
    assert last.finish_reason == "length" and last.usage.completion_tokens == len(script)
    assert last.usage.prompt_tokens > 0 and last.timings.total_ms > 0
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_every_token_streams_alone_by_default() -> None:
    chunks = _run(_orchestrator(FakeLM(list(range(20, 27)))), _request())
    assert [c.token_ids for c in chunks] == [(t,) for t in range(20, 27)]


@pytest.mark.parametrize("interval", [2, 3, 10])
def test_stream_interval_groups_tokens_and_loses_none(interval: int) -> None:
    tokenizer = PromptBuilder.from_pretrained(str(tiny_model_path("llama"))).tokenizer
    script = tokenizer.encode("hello world and more text here", add_special_tokens=False)
    alone = _run(_orchestrator(FakeLM(script)), _request())
    chunks = _run(_orchestrator(FakeLM(script), stream_interval=interval), _request())
    assert [len(c.token_ids) for c in chunks[:-1]] == [interval] * (len(chunks) - 1)
    assert 1 <= len(chunks[-1].token_ids) <= interval
    assert [t for c in chunks for t in c.token_ids] == script
    assert "".join(c.text for c in chunks) == "".join(c.text for c in alone)
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage == alone[-1].usage


def test_stop_string_cuts_the_text_and_closes_the_lm_stream() -> None:
    tokenizer = PromptBuilder.from_pretrained(str(tiny_model_path("llama"))).tokenizer
    script = tokenizer.encode("the cat sat on the mat today", add_special_tokens=False)
    lm = FakeLM(script)
    chunks = _run(_orchestrator(lm), _request(stop=["on the"]))
    assert "".join(c.text for c in chunks) == "the cat sat "
    assert chunks[-1].finish_reason == "stop"
    assert lm.closed_early == lm.request_ids  # the LM request was aborted, not run to the end


def test_client_ids_may_repeat_but_lm_ids_never_do() -> None:
    lm = FakeLM([10, 11, 12], delay=0.01)
    orchestrator = _orchestrator(lm)

    async def both() -> None:
        async def one() -> None:
            async for _ in orchestrator.generate(_request(request_id="same")):
                pass

        await asyncio.gather(one(), one())

    asyncio.run(both())
    assert len(set(lm.request_ids)) == 2 and all(r.startswith("same-") for r in lm.request_ids)


def test_one_deadline_covers_encode_and_generate() -> None:
    orchestrator = _orchestrator(FakeLM([1, 2]), name="llava")
    request = GenerationRequest(
        "r",
        SamplingParams(),
        prompt="<image>",
        media=(MediaInput("image", data=b"x"),),
        timeout=0.1,
    )
    with pytest.raises(TimeoutError):
        _run(orchestrator, request)


def test_cancelling_the_consumer_closes_the_lm_stream() -> None:
    lm = FakeLM(list(range(10, 60)), delay=0.01)
    orchestrator = _orchestrator(lm)

    async def cancel_midway() -> None:
        async def consume() -> None:
            async for _ in orchestrator.generate(_request(max_tokens=50)):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert lm.closed_early == lm.request_ids and lm.request_ids


def test_media_handles_report_a_cache_hit() -> None:
    import torch

    orchestrator = _orchestrator(FakeLM([1]), name="llava")
    stored = EncodeResult(torch.zeros(16, 64), 16, "abc", False, {})
    handle = orchestrator.media_store.put("image", stored)
    request = GenerationRequest(
        "r", SamplingParams(), prompt="<image>hi", media=(MediaInput("image", handle=handle),)
    )
    assert _run(orchestrator, request)[-1].media_cache_hits == (True,)


# -------------------------------------------------- early close: at once, no sleep, no GC


def test_aclose_between_chunks_closes_the_lm_stream_at_once() -> None:
    lm = FakeLM(list(range(10, 60)))
    orchestrator = _orchestrator(lm)

    async def stop_after_one() -> None:
        chunks = orchestrator.generate(_request(max_tokens=50))
        await anext(chunks)
        assert lm.closed_early == []
        await chunks.aclose()
        assert lm.closed_early == lm.request_ids  # before any other await: no GC, no sleep

    asyncio.run(stop_after_one())


def test_a_stop_string_closes_the_lm_stream_before_the_last_chunk_is_read() -> None:
    tokenizer = PromptBuilder.from_pretrained(str(tiny_model_path("llama"))).tokenizer
    script = tokenizer.encode("the cat sat on the mat today", add_special_tokens=False)
    lm = FakeLM(script)
    orchestrator = _orchestrator(lm)

    async def read_until_stop() -> None:
        async for chunk in orchestrator.generate(_request(stop=["on the"])):
            if chunk.finish_reason == "stop":
                assert lm.closed_early == lm.request_ids  # aborted before the client reads it
                return
        raise AssertionError("no stop")

    asyncio.run(read_until_stop())


def test_closing_the_grpc_stream_closes_the_lm_stream_at_once() -> None:
    from gateway.api.grpc_servicer import GatewayServicer
    from protos.meshserve.v1 import common_pb2, gateway_pb2

    lm = FakeLM(list(range(10, 60)))
    servicer = GatewayServicer(_orchestrator(lm))

    class Context:
        def __init__(self) -> None:
            self.written: asyncio.Future[gateway_pb2.GenerateResponse] | None = None

        def time_remaining(self) -> None:
            return None

        async def write(self, reply: gateway_pb2.GenerateResponse) -> None:
            self.written.set_result(reply)
            await asyncio.Event().wait()  # the client reads no more

    async def stop_after_one() -> None:
        request = gateway_pb2.GenerateRequest(
            prompt="Hello", sampling=common_pb2.SamplingParams(max_tokens=50)
        )
        context = Context()
        context.written = asyncio.get_running_loop().create_future()
        call = asyncio.create_task(servicer.Generate(request, context))
        assert (await context.written).token_ids
        call.cancel()  # what grpc.aio does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await call
        assert lm.closed_early == lm.request_ids

    asyncio.run(stop_after_one())
