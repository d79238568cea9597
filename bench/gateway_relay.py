"""The least a gRPC relay does (bench/gateway.py --relay): one GenerateStream call to the LM
fanned out to the Generate streams of its clients, a reply per token, nothing else: no
tokenizing, detokenizing, metrics or checks. Its CPU per token is grpc.aio's floor here. Its
helper threads run SCHED_BATCH and all its threads share one CPU, as the gateway's do
(protos.sched, --pin-cpu auto)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import sys
from collections.abc import AsyncIterator

import grpc

from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, lm_pb2, lm_pb2_grpc
from protos.sched import AUTO, keep_thread_policy


class Relay(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, lm: lm_pb2_grpc.LanguageModelStub) -> None:
        self._outbox: asyncio.Queue[lm_pb2.LMStreamRequest] = asyncio.Queue()
        self._streams: dict[str, tuple[collections.deque, list]] = {}
        self._ids = itertools.count()
        self._call = lm.GenerateStream(self._messages())
        self._reader = asyncio.create_task(self._read())

    async def _messages(self) -> AsyncIterator[lm_pb2.LMStreamRequest]:
        while True:
            yield await self._outbox.get()

    async def _read(self) -> None:
        while (message := await self._call.read()) is not grpc.aio.EOF:
            for output in message.outputs:
                items, waiter = self._streams[output.request_id]
                items.append(output.step)
                if waiter and not waiter[0].done():
                    waiter[0].set_result(None)

    async def Generate(self, request: gateway_pb2.GenerateRequest, context: object) -> None:
        request_id = str(next(self._ids))
        items: collections.deque = collections.deque()
        waiter: list = []
        self._streams[request_id] = (items, waiter)
        sampling = common_pb2.SamplingParams(max_tokens=request.sampling.max_tokens)
        generate = lm_pb2.LMGenerateRequest(request_id=request_id, sampling=sampling)
        self._outbox.put_nowait(lm_pb2.LMStreamRequest(generate=generate))
        try:
            while True:
                if not items:
                    waiter[:] = [asyncio.get_running_loop().create_future()]
                    await waiter[0]
                step = items.popleft()
                reply = gateway_pb2.GenerateResponse(text="ab", token_ids=step.token_ids)
                await context.write(reply)
                if step.finish_reason:
                    return
        finally:
            del self._streams[request_id]


async def main(lm_target: str) -> None:
    channel = grpc.aio.insecure_channel(lm_target)
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(
        Relay(lm_pb2_grpc.LanguageModelStub(channel)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    helpers = asyncio.create_task(keep_thread_policy(cpu=AUTO))  # as the gateway's are
    print(f"relay ready on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()
    helpers.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
