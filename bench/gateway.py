"""The gateway alone: its CPU per streamed token against a scripted LM, no engine beside it.

bench/mesh.py measures the gateway beside a real LM service, whose engine shares the cores and
the caches; here the LM is a scripted GenerateStream server in this process that answers every
live request with one token per `--step-ms` (one message per step for all of a call's
requests, as the LM service does), so the gateway's own cost per token shows alone. The
gateway runs as `meshserve gateway` in its own process; its CPU comes from /proc, and so do
its context switches per token (each a thread of it put to sleep and woken, or preempted): a
count the machine's speed does not move, where the CPU figure moves with it.

`--relay` runs, in the gateway's place, the least a gRPC relay can do: one GenerateStream from
the LM fanned out to the client streams, one reply per token, nothing else. That is the floor
grpc.aio sets on this machine (a sendmsg per reply, a completion per write).

`--beside-engine N` runs a busy N-layer bench engine (bench/engine_load.py) in a process of
its own during the measurement: the contention the gateway meets in the mesh, where the engine
keeps both cores busy, without the rest of the mesh. Run it with and without `--relay` to see
what of the gateway's cost there is grpc.aio's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.engine_load import READY
from bench.proc_cpu import context_switches, cpu_seconds, load_average
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, lm_pb2, lm_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
TOKENS = range(300, 800)  # ids the bench tokenizer decodes to text


class ScriptedLM(lm_pb2_grpc.LanguageModelServicer):
    """Every `step_s`, one message per call with the next token of each of its requests."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s

    async def GetInfo(self, request: object, context: object) -> lm_pb2.LMInfo:
        return lm_pb2.LMInfo(
            model="scripted", architecture="Qwen2ForCausalLM", max_model_len=4096,
            block_size=16, num_blocks=4096, vocab_size=151936, hidden_size=896,
            dtype="float32", tasks=["generate"],
        )  # fmt: skip

    async def GenerateStream(self, requests: object, context: object) -> object:
        live: dict[str, list[int]] = {}  # request id -> [tokens sent, max_tokens]
        reader = asyncio.create_task(_read_requests(requests, live))
        try:
            while not reader.done() or live:
                await asyncio.sleep(self.step_s)
                if live:
                    yield _step(live)
        finally:
            reader.cancel()


async def _read_requests(requests: object, live: dict[str, list[int]]) -> None:
    async for message in requests:
        if message.WhichOneof("action") == "generate":
            live[message.generate.request_id] = [0, message.generate.sampling.max_tokens]
        else:
            live.pop(message.abort_request_id, None)


def _step(live: dict[str, list[int]]) -> lm_pb2.LMStreamResponse:
    outputs = []
    for request_id, state in list(live.items()):
        state[0] += 1
        finish = common_pb2.FINISH_REASON_LENGTH if state[0] >= state[1] else 0
        step = lm_pb2.LMGenerateResponse(
            token_ids=[TOKENS[state[0] % len(TOKENS)]], finish_reason=finish, num_prompt_tokens=4
        )
        outputs.append(lm_pb2.LMStreamOutput(request_id=request_id, step=step))
        if finish:
            del live[request_id]
    return lm_pb2.LMStreamResponse(outputs=outputs)


async def serve_lm(step_s: float) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    lm_pb2_grpc.add_LanguageModelServicer_to_server(ScriptedLM(step_s), server)
    health = aio_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


def build_model_dir(out: Path) -> Path:
    """Config and tokenizer only: all the gateway reads."""
    from transformers import Qwen2Config

    from gateway.tools.tiny_models.text import text_tokenizer

    tokenizer = text_tokenizer("qwen2")
    Qwen2Config(vocab_size=151936, hidden_size=64, num_hidden_layers=1).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


async def start_gateway(
    model: Path, lm_port: int, args: argparse.Namespace
) -> tuple[asyncio.subprocess.Process, str]:
    """The gateway (or the relay) as a child process; its address once it is ready.
    NOTE: read without blocking: the scripted LM it waits for runs on this event loop."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.relay:
        command = [sys.executable, "-m", "bench.gateway_relay", f"127.0.0.1:{lm_port}"]
    else:
        command = [
            sys.executable, "-m", "gateway.tools.cli", "gateway", "--model", str(model),
            "--lm", f"127.0.0.1:{lm_port}", "--port", "0",
            "--stream-interval", str(args.stream_interval),
        ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    while line := (await process.stdout.readline()).decode():
        if "ready on " in line:
            asyncio.create_task(_drain(process.stdout))  # noqa: RUF006 - ends with the process
            return process, line.split("ready on ")[1].split()[0]
    raise RuntimeError("the gateway exited before it was ready")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def one_stream(stub: object, max_tokens: int) -> tuple[int, int]:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    request = gateway_pb2.GenerateRequest(prompt="hello there, world", sampling=sampling)
    tokens = messages = 0
    async for reply in stub.Generate(request):
        tokens, messages = tokens + len(reply.token_ids), messages + 1
    return tokens, messages


async def measure(
    address: str, pid: int, args: argparse.Namespace
) -> list[tuple[float, float, float]]:
    """Per round: (CPU us per token, messages per token, context switches per token)."""
    rounds = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await one_stream(stub, 4)  # warm-up: the LM call, the first tokenizations
        for _ in range(args.rounds):
            before, switches = cpu_seconds(pid), context_switches(pid)
            counts = await asyncio.gather(
                *(one_stream(stub, args.max_tokens) for _ in range(args.streams))
            )
            tokens, messages = map(sum, zip(*counts, strict=True))
            cpu_us = (cpu_seconds(pid) - before) / tokens * 1e6
            switched = (sum(context_switches(pid)) - sum(switches)) / tokens
            rounds.append((cpu_us, messages / tokens, switched))
    return rounds


async def start_engine_load(layers: int, vocab: int | None) -> asyncio.subprocess.Process:
    """bench/engine_load.py as a child process, once its engine is up."""
    command = [sys.executable, "-m", "bench.engine_load", "--layers", str(layers)]
    if vocab is not None:
        command += ["--vocab", str(vocab)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    while line := (await process.stdout.readline()).decode():
        if READY in line:
            asyncio.create_task(_drain(process.stdout))  # noqa: RUF006 - ends with the process
            return process
    raise RuntimeError("the engine load exited before it was ready")


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), 30)


async def run(args: argparse.Namespace) -> None:
    server, lm_port = await serve_lm(args.step_ms / 1e3)
    children: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.beside_engine:
                children.append(await start_engine_load(args.beside_engine, args.engine_vocab))
            process, address = await start_gateway(build_model_dir(Path(tmp)), lm_port, args)
            children.append(process)
            rounds = await measure(address, process.pid, args)
        finally:
            for child in reversed(children):
                await stop(child)
            await server.stop(0)
    per_token = sorted(r[0] for r in rounds)
    switches = sorted(r[2] for r in rounds)
    name = "minimal relay" if args.relay else "gateway"
    beside = f"beside a busy {args.beside_engine}-layer engine; " if args.beside_engine else ""
    print(
        f"{name} CPU per streamed token: min {per_token[0]:.1f} us, median "
        f"{per_token[len(per_token) // 2]:.1f} us over {args.rounds} rounds of {args.streams} "
        f"streams x {args.max_tokens} tokens, a step every {args.step_ms:g} ms; messages per "
        f"token {rounds[0][1]:.3f}; context switches per token {switches[len(switches) // 2]:.2f} "
        f"(median; its threads woken, or preempted); {beside}{load_average()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--step-ms", type=float, default=20.0, help="the scripted engine step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stream-interval", type=int, default=1)
    parser.add_argument("--relay", action="store_true", help="measure the minimal relay instead")
    parser.add_argument(
        "--beside-engine",
        type=int,
        default=0,
        metavar="LAYERS",
        help="run a busy bench engine of this many layers beside it (0: none)",
    )
    parser.add_argument("--engine-vocab", type=int, default=None, help=argparse.SUPPRESS)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
