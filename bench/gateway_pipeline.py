"""The gateway's own Python per streamed token, without gRPC on either side.

A fake GenerateStream call feeds the remote LM backend's stream mux one message per step for
all live requests (as the LM service sends them), and each client stream runs as the servicer
runs it: the orchestrator, its OutputStream (detokenizing), the metrics tracker and the reply
message, with nothing written. The CPU per token here is the part of `bench.gateway`'s figure
that is ours; the rest is grpc.aio's, which `bench.gateway --relay` measures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from bench.gateway import TOKENS, build_model_dir
from bench.proc_cpu import load_average
from gateway.api.grpc_convert import chunk_to_pb
from gateway.app import build_orchestrator, served_model
from gateway.backends.remote import RemoteEncoderBackend, RemoteLMBackend
from gateway.pipeline.orchestrator import Orchestrator
from gateway.pipeline.types import GenerationRequest
from protos.meshserve.v1 import common_pb2, lm_pb2
from protos.metrics import StreamMetrics
from protos.sampling_params import SamplingParams

WARM_STEPS = 2  # steps before the clock starts: the requests' own set-up is not counted


class FakeCall:
    """One GenerateStream call: records the requests sent, returns the steps it is given."""

    def __init__(self, requests: AsyncIterator[lm_pb2.LMStreamRequest]) -> None:
        self.steps: asyncio.Queue[Any] = asyncio.Queue()  # step messages, then maybe EOF
        self.request_ids: list[str] = []
        self._reader = asyncio.ensure_future(self._read(requests))

    async def _read(self, requests: AsyncIterator[lm_pb2.LMStreamRequest]) -> None:
        async for message in requests:
            if message.WhichOneof("action") == "generate":
                self.request_ids.append(message.generate.request_id)

    async def read(self) -> Any:
        return await self.steps.get()

    def cancel(self) -> None:
        """As a cancelled call does: the reader's next read ends the stream."""
        self._reader.cancel()
        self.steps.put_nowait(grpc.aio.EOF)


class FakeStub:
    def __init__(self) -> None:
        self.calls: list[FakeCall] = []

    def GenerateStream(self, requests: AsyncIterator[lm_pb2.LMStreamRequest]) -> FakeCall:
        self.calls.append(FakeCall(requests))
        return self.calls[-1]


def step_message(request_ids: list[str], index: int, last: bool) -> lm_pb2.LMStreamResponse:
    """One engine step's message: the next token of every request; the last ends them."""
    finish = common_pb2.FINISH_REASON_LENGTH if last else 0
    step = lm_pb2.LMGenerateResponse(
        token_ids=[TOKENS[index % len(TOKENS)]], finish_reason=finish, num_prompt_tokens=4
    )
    outputs = [lm_pb2.LMStreamOutput(request_id=rid, step=step) for rid in request_ids]
    # NOTE: parsed from bytes, as the reader gets it from the wire
    return lm_pb2.LMStreamResponse.FromString(
        lm_pb2.LMStreamResponse(outputs=outputs).SerializeToString()
    )


class Streams:
    """`num` client streams over one orchestrator; counts the replies they built."""

    def __init__(self, orchestrator: Orchestrator, num: int, max_tokens: int) -> None:
        self.metrics = StreamMetrics(CollectorRegistry())
        self.num_replies = 0
        self.step_done = asyncio.Event()
        self._num = num
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self.tasks = [
            asyncio.create_task(self._stream(orchestrator, i, params)) for i in range(num)
        ]

    async def _stream(self, orchestrator: Orchestrator, i: int, params: SamplingParams) -> None:
        request = GenerationRequest(f"s{i}", params, prompt=f"stream {i}: " + "hello world " * 8)
        with self.metrics.stream() as tracker:
            async for chunk in orchestrator.generate(request):
                tracker.on_tokens(len(chunk.token_ids), chunk.finish_reason)
                chunk_to_pb(chunk)
                self.num_replies += 1
                if self.num_replies % self._num == 0:
                    self.step_done.set()


async def one_round(model: Path, num_streams: int, max_tokens: int) -> float:
    """CPU seconds per streamed token, over the steps after the first WARM_STEPS."""
    stub = FakeStub()
    lm = RemoteLMBackend(["127.0.0.1:9"])  # never dialled: its replica's stub is the fake
    lm.replicas.replicas[0].stub = stub  # a plain host:port: one GenerateStream call
    orchestrator = build_orchestrator(served_model(str(model)), RemoteEncoderBackend({}), lm)
    streams = Streams(orchestrator, num_streams, max_tokens)
    while not stub.calls or len(stub.calls[0].request_ids) < num_streams:
        await asyncio.sleep(0.005)
    call = stub.calls[0]
    start = 0.0
    for index in range(max_tokens):
        if index == WARM_STEPS:
            start = time.process_time()
        streams.step_done.clear()
        call.steps.put_nowait(step_message(call.request_ids, index, index == max_tokens - 1))
        await streams.step_done.wait()
    used = time.process_time() - start
    await asyncio.gather(*streams.tasks)
    await lm.close()
    assert streams.num_replies == num_streams * max_tokens
    return used / (num_streams * (max_tokens - WARM_STEPS))


async def run(args: argparse.Namespace) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model_dir(Path(tmp))
        rounds = [await one_round(model, args.streams, args.max_tokens) for _ in range(args.rounds)]
    us = sorted(r * 1e6 for r in rounds)
    print(
        f"gateway pipeline (no gRPC) CPU per streamed token: min {us[0]:.1f} us, median "
        f"{statistics.median(us):.1f} us over {args.rounds} rounds of {args.streams} streams x "
        f"{args.max_tokens} tokens; {load_average()}"
    )
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
