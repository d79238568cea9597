"""What the mesh costs over the engine: the same requests in process and through `meshserve up`.

Workload: `--streams` concurrent Generate streams of text (greedy, ignore_eos, `--max-tokens`
each), then `--batch1` single requests one after another for time to first token. In process
the engine is stepped directly (add_request / step); through the mesh a gRPC client streams
from the gateway, which runs as its own process beside the LM service (`meshserve up`).

Printed: tokens/s of each and the mesh's share, TTFT p50/p99 and inter-token latency (in
process, through the mesh, added), stream messages per token, and the CPU each process spends
per streamed token (from /proc utime+stime before/after the timed phase). The LM server's
non-engine CPU is its CPU through the mesh less what the engine alone spent in process on the
same requests; its event-loop thread (the main thread, where grpc.aio runs) is shown too.

The model is random-weight Qwen2-0.5B-shaped (bench.mesh_model), `--layers` 4 by default on
these small CPUs; pass `--layers 24 --dtype bfloat16 --device cuda` for the real shape on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.mesh_model import build_qwen2_shaped
from bench.proc_cpu import cpu_seconds, load_average, thread_groups

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunStats:
    """Timings of one run: per request, its TTFT and mean inter-token latency (seconds)."""

    num_tokens: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    num_messages: int = 0
    batch1_ttft_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process or thread -> CPU seconds
    idle_cpu_per_s: dict[str, float] = field(default_factory=dict)  # the same, idle, per second

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.wall_s


def make_prompts(tokenizer: object, n: int, length: int, seed: int) -> list[list[int]]:
    """`n` prompts of about `length` tokens, as the ids the gateway's tokenizer gives them."""
    rng = random.Random(seed)
    texts = [
        tokenizer.decode([rng.randrange(10, len(tokenizer)) for _ in range(length)])
        for _ in range(n)
    ]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


# ----------------------------------------------------------------------------- in process


def run_engine(path: Path, prompts: list[list[int]], args: argparse.Namespace) -> RunStats:
    """The engine alone, stepped on a thread of its own as the LM service steps it.

    NOTE: not on the main thread: on these CPUs torch runs its ops from the main thread up
    to 1.5x slower than from another thread when the cores are busy (OpenMP's team), which
    would flatter the mesh.
    """
    result: list[RunStats] = []
    thread = threading.Thread(target=lambda: result.append(_run_engine(path, prompts, args)))
    thread.start()
    thread.join()
    return result[0]


def _run_engine(path: Path, prompts: list[list[int]], args: argparse.Namespace) -> RunStats:
    from lm_service import Engine, EngineConfig, SamplingParams

    engine = Engine(EngineConfig(model=str(path), **engine_kwargs(args)))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    engine.generate([prompts[0][:8]], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up
    stats = RunStats()
    cpu0, start = time.process_time(), time.perf_counter()
    added = {engine.add_request(f"r{i}", p, params): start for i, p in enumerate(prompts)}
    _drain(engine, added, stats)
    stats.wall_s = time.perf_counter() - start
    stats.cpu_s["engine process"] = time.process_time() - cpu0
    one = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    for i in range(args.batch1):
        sent = time.perf_counter()
        engine.add_request(f"b{i}", prompts[i % len(prompts)][: args.batch1_prompt], one)
        first = None
        while engine.has_unfinished():
            if engine.step() and first is None:
                first = time.perf_counter()
        stats.batch1_ttft_s.append(first - sent)
    return stats


def _drain(engine: object, added: dict[str, float], stats: RunStats) -> None:
    first: dict[str, float] = {}
    counts: dict[str, int] = {}
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            rid = out.request_id
            first.setdefault(rid, now)
            counts[rid] = counts.get(rid, 0) + len(out.new_token_ids)
            stats.num_messages += 1
            if out.finished:
                _record(stats, now - added[rid], now - first[rid], counts[rid])
    stats.num_tokens = sum(counts.values())


def _record(stats: RunStats, ttft_or_total: float, decode_s: float, num_tokens: int) -> None:
    stats.ttft_s.append(ttft_or_total - decode_s)
    stats.itl_s.append(decode_s / max(num_tokens - 1, 1))


def engine_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return dict(
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=64,
        max_num_batched_tokens=1024,
        kv_cache_memory=args.kv_cache_memory,
    )


# ----------------------------------------------------------------------------- the mesh


class Mesh:
    """`meshserve up` as a child process group; knows its services' addresses and pids."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        kwargs = engine_kwargs(args)
        flags = [
            "--dtype", args.dtype, "--device", args.device,
            "--max-num-seqs", str(kwargs["max_num_seqs"]),
            "--max-num-batched-tokens", str(kwargs["max_num_batched_tokens"]),
            "--kv-cache-memory", str(args.kv_cache_memory),
            *args.up_flag,
        ]  # fmt: skip
        command = [sys.executable, "-m", "gateway.tools.cli", "up", "--model", str(path)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [*command, "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.pids: dict[str, int] = {}
        self.gateway = self._wait_ready(timeout=300)

    def _wait_ready(self, timeout: float) -> str:
        timer = threading.Timer(timeout, self.stop)
        timer.start()
        try:
            for line in self.process.stdout:
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "pid":
                    self.pids[parts[0]] = int(parts[3])
                if line.startswith("meshserve up: gateway on "):
                    return line.split()[4]
        finally:
            timer.cancel()
        raise RuntimeError("meshserve up exited before it was ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)


async def _stream(stub: object, text: str, max_tokens: int, stats: RunStats) -> int:
    from protos.meshserve.v1 import common_pb2, gateway_pb2

    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    sent = time.perf_counter()
    first = last = None
    num_tokens = 0
    async for reply in stub.Generate(gateway_pb2.GenerateRequest(prompt=text, sampling=sampling)):
        last = time.perf_counter()
        first = first or last
        num_tokens += len(reply.token_ids)
        stats.num_messages += 1
    _record(stats, last - sent, last - first, num_tokens)
    return num_tokens


async def run_mesh_streams(mesh: Mesh, texts: list[str], args: argparse.Namespace) -> RunStats:
    import grpc

    from protos.channels import CHANNEL_OPTIONS
    from protos.meshserve.v1 import gateway_pb2_grpc

    stats = RunStats()
    async with grpc.aio.insecure_channel(mesh.gateway, options=CHANNEL_OPTIONS) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        await _stream(stub, texts[0], 2, RunStats())  # warm-up: connections, first step
        idle_before = _mesh_cpu(mesh)
        await asyncio.sleep(args.idle_seconds)  # what the services burn doing nothing
        before = _mesh_cpu(mesh)
        stats.idle_cpu_per_s = {
            name: (before[name] - idle_before[name]) / args.idle_seconds for name in before
        }
        cpu0, start = time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(_stream(stub, t, args.max_tokens, stats) for t in texts))
        stats.wall_s = time.perf_counter() - start
        after = _mesh_cpu(mesh)
        stats.cpu_s = {name: after[name] - before.get(name, 0.0) for name in after}
        stats.cpu_s["bench client"] = time.process_time() - cpu0
        stats.num_tokens = sum(counts)
        for i in range(args.batch1):
            one = RunStats()
            await _stream(stub, texts[i % len(texts)], 2, one)
            stats.batch1_ttft_s.append(one.ttft_s[0])
    return stats


def _mesh_cpu(mesh: Mesh) -> dict[str, float]:
    """CPU seconds of each service, and of its threads by kind (bench.proc_cpu)."""
    out: dict[str, float] = {}
    for name, pid in mesh.pids.items():
        out[name] = cpu_seconds(pid)
        for group, seconds in thread_groups(pid).items():
            out[f"  {name} {group}"] = seconds
    return out


# ----------------------------------------------------------------------------- report


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def report(ours: RunStats, mesh: RunStats, args: argparse.Namespace) -> None:
    share = mesh.tokens_per_s / ours.tokens_per_s
    print(
        f"throughput  engine {ours.tokens_per_s:8.1f} tok/s   mesh {mesh.tokens_per_s:8.1f} "
        f"tok/s   share {share:.3f}   ({args.streams} streams x {args.max_tokens} tokens)"
    )
    for name, a, b in (
        ("TTFT under load", ours.ttft_s, mesh.ttft_s),
        ("batch-1 TTFT", ours.batch1_ttft_s, mesh.batch1_ttft_s),
        ("inter-token", ours.itl_s, mesh.itl_s),
    ):
        p50 = (_ms(a, 0.5), _ms(b, 0.5))
        p99 = (_ms(a, 0.99), _ms(b, 0.99))
        print(
            f"{name:<16} p50 {p50[0]:7.2f} -> {p50[1]:7.2f} ms (added {p50[1] - p50[0]:+6.2f})"
            f"   p99 {p99[0]:7.2f} -> {p99[1]:7.2f} ms (added {p99[1] - p99[0]:+6.2f})"
        )
    print(f"stream messages per token: mesh {mesh.num_messages / mesh.num_tokens:.3f}")
    per_token = {name: s / mesh.num_tokens * 1e6 for name, s in mesh.cpu_s.items()}
    idle = {
        name: r * mesh.wall_s / mesh.num_tokens * 1e6 for name, r in mesh.idle_cpu_per_s.items()
    }
    engine_us = ours.cpu_s["engine process"] / ours.num_tokens * 1e6
    print(f"CPU per streamed token (us): engine alone in process {engine_us:.0f}")
    print(f"  {'':<30} {'total':>8} {'idle rate':>10}  (the idle rate's share: background work)")
    for name, us in per_token.items():
        print(f"  {name:<30} {us:8.0f} {idle.get(name, 0.0):10.0f}")
    if "lm" in per_token:
        non_engine = per_token["  lm event loop"] + per_token["  lm grpc threads"]
        print(f"  {'lm non-engine threads':<30} {non_engine:8.0f}")
    print(load_average())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2-0.5B has 24)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--prompt-len", type=int, default=64, help="about this many tokens")
    parser.add_argument("--batch1", type=int, default=20, help="single requests for TTFT")
    parser.add_argument("--batch1-prompt", type=int, default=32)
    parser.add_argument("--kv-cache-memory", type=int, default=1 << 30)
    parser.add_argument(
        "--idle-seconds", type=float, default=3.0, help="idle CPU sampled before the run"
    )
    parser.add_argument(
        "--up-flag", action="append", default=[], help="one more `meshserve up` flag (repeat)"
    )
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = build_qwen2_shaped(Path(tmp) / "model", args.layers, args.dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prompts = make_prompts(tokenizer, args.streams, args.prompt_len, seed=0)
        texts = [tokenizer.decode(p) for p in prompts]
        print(
            f"model: Qwen2-0.5B shape, {args.layers} layers, {args.dtype} on {args.device}; "
            f"{args.streams} streams, {sum(map(len, prompts))} prompt tokens; {load_average()}",
            flush=True,
        )
        # NOTE: in a fresh process, as the LM service is: this one built the model with HF,
        # and its heap and threads would not give the engine the same start
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            ours = pool.submit(run_engine, path, prompts, args).result()
        print(f"engine in process done ({ours.wall_s:.1f}s); starting meshserve up", flush=True)
        mesh = Mesh(path, args)
        try:
            mesh_stats = asyncio.run(run_mesh_streams(mesh, texts, args))
        finally:
            mesh.stop()
        report(ours, mesh_stats, args)


if __name__ == "__main__":
    main()
