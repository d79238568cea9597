"""What the mesh costs over the engine: the same requests in process and through `meshserve up`.

Workload (`--workload text`): `--streams` concurrent Generate streams of text (greedy,
ignore_eos, `--max-tokens` each), then `--batch1` single requests one after another for time
to first token. `--workload image`: the same, each request with one image, on a
Qwen2-VL-shaped model; the mesh then runs an image encoder service too.

In process, in a fresh `python -m bench.mesh_engine` with the environment `meshserve up`
gives its services: for text the engine stepped directly (add_request / step) on a thread of
its own, as the LM service steps it; for images the offline `LLM` API's in-process stack
(tower and engine in one process). Through the mesh a gRPC client streams from the gateway,
which runs as its own process beside the LM (and encoder) services.

Rounds alternate, engine then mesh, `--rounds` times (5: engine, mesh, engine, mesh, ...;
the mesh stays up between its rounds), each round with new prompts and images so no cache
carries over; every round's share is printed and the median share decides, so one noisy round
cannot. One round's share moves by up to 0.17 on this shared machine (the in-process rate alone
moved from 194 to 236 tok/s between rounds of one run): with 3 rounds two disturbed rounds of
one kind decided the median.

Printed: tokens/s of each and the mesh's share per round, TTFT p50/p99 and inter-token latency
(in process, through the mesh, added; over all rounds), stream messages per token, the CPU
each process spends per streamed token (from /proc utime+stime before/after the timed
phases) and each one's context switches per streamed token, woken and preempted (counts,
which the machine's speed does not move), the image encoder's CPU per request, for text the
engine's CPU share (the LM engine loop's part of the CPU every service and the bench client
took: on busy cores, what the mesh leaves the engine; the wall clock's spread between rounds
does not move it), and the KV cache's --kv-cache-memory check (bytes per token, blocks,
budget, measured growth) of the in-process engine and the LM service. The LM server's non-engine CPU is all of it but the
"engine-loop" thread and the torch workers it started: the event loop (the main thread, where
grpc.aio runs), gRPC's threads, and the other Python threads (grpc.aio's poller among them;
until this wave the poller was counted with the engine).

The model is random-weight Qwen2-0.5B-shaped (bench.mesh_model), `--layers` 4 by default on
these small CPUs; pass `--layers 24 --dtype bfloat16 --device cuda` for the real shape on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.mesh_engine import RESULT_PREFIX
from bench.mesh_model import IMAGE_SIDE, build_qwen2_shaped, build_qwen2_vl_shaped
from bench.mesh_stats import RunStats, engine_cpu_share, merged, quantile_ms
from bench.mesh_workload import Request, Workload, make_workload
from bench.proc_cpu import context_switches, cpu_seconds, load_average, thread_groups
from protos.ports import free_port_run

ROOT = Path(__file__).resolve().parents[1]


def service_env() -> dict[str, str]:
    """The environment `meshserve up` gives its services (gateway.tools.launcher), so the
    in-process baseline runs with the same torch threads and allocator settings."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def engine_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return dict(
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=64,
        max_num_batched_tokens=1024,
        kv_cache_memory=args.kv_cache_memory,
    )


def run_in_process(path: Path, workload: Workload, args: argparse.Namespace) -> RunStats:
    """One baseline round in a fresh `python -m bench.mesh_engine` (its own heap and threads,
    as the LM service has; this process built the model with HF)."""
    job = {"model": str(path), "engine": engine_kwargs(args), "workload": workload.to_json()}
    done = subprocess.run(
        [sys.executable, "-m", "bench.mesh_engine"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=service_env(),
        cwd=ROOT,
        timeout=1800,
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return RunStats.from_json(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"bench.mesh_engine failed ({done.returncode}):\n{done.stderr[-3000:]}")


# ----------------------------------------------------------------------------- the mesh


class Mesh:
    """`meshserve up` as a child process group; knows its services' addresses and pids."""

    def __init__(self, path: Path, args: argparse.Namespace, log_dir: Path) -> None:
        kwargs = engine_kwargs(args)
        flags = [
            "--dtype", args.dtype, "--device", args.device,
            "--max-num-seqs", str(kwargs["max_num_seqs"]),
            "--max-num-batched-tokens", str(kwargs["max_num_batched_tokens"]),
            "--kv-cache-memory", str(args.kv_cache_memory),
            "--log-dir", str(log_dir),
            *args.up_flag,
        ]  # fmt: skip
        # the gateway's metrics on `base`, the backends' after it in plan order (LM first)
        base = free_port_run(8)  # gateway, LM, encoders
        flags += ["--metrics-port", str(base)]
        self.metrics_ports = {"gateway": base, "lm": base + 1}
        command = [sys.executable, "-m", "gateway.tools.cli", "up", "--model", str(path)]
        self.log_dir = log_dir
        self.process = subprocess.Popen(
            [*command, "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=service_env(),
            start_new_session=True,
        )
        self.pids: dict[str, int] = {}
        self.gateway = self._wait_ready(timeout=600)

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

    def kv_memory_line(self) -> str:
        """The LM service's own --kv-cache-memory report, from its log."""
        for log in sorted(self.log_dir.glob("lm*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if "bytes per token" in line:
                    return line.split(": ", 1)[-1]
        return "not found in the LM service's log"

    def ttft_totals(self) -> dict[str, tuple[float, float]]:
        """Each service's own time to first token so far (its receipt of a request -> its
        first output): the histogram's (sum seconds, count), from its /metrics."""
        return {name: ttft_histogram(port) for name, port in self.metrics_ports.items()}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)


async def _stream(stub: object, request: Request, max_tokens: int, stats: RunStats) -> int:
    from protos.meshserve.v1 import common_pb2, gateway_pb2

    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    media = []
    if request.image_png_b64 is not None:
        media = [gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=request.image_png)]
    message = gateway_pb2.GenerateRequest(prompt=request.text, media=media, sampling=sampling)
    sent = time.perf_counter()
    first = last = None
    num_tokens = 0
    async for reply in stub.Generate(message):
        last = time.perf_counter()
        first = first or last
        num_tokens += len(reply.token_ids)
        stats.num_messages += 1
    stats.record(last - sent, last - first, num_tokens)
    return num_tokens


async def run_mesh_streams(mesh: Mesh, workload: Workload, args: argparse.Namespace) -> RunStats:
    import grpc

    from protos.channels import CHANNEL_OPTIONS
    from protos.meshserve.v1 import gateway_pb2_grpc

    stats = RunStats(kv_memory=mesh.kv_memory_line())
    async with grpc.aio.insecure_channel(mesh.gateway, options=CHANNEL_OPTIONS) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        await _stream(stub, workload.warmup, 2, RunStats())  # connections, first step, tower
        idle_before = _mesh_cpu(mesh)
        await asyncio.sleep(args.idle_seconds)  # what the services burn doing nothing
        before, switches = _mesh_cpu(mesh), _mesh_switches(mesh)
        stats.idle_cpu_per_s = {
            name: (before[name] - idle_before[name]) / args.idle_seconds for name in before
        }
        cpu0, start = time.process_time(), time.perf_counter()
        streams = workload.streams
        counts = await asyncio.gather(
            *(_stream(stub, r, workload.max_tokens, stats) for r in streams)
        )
        stats.wall_s = time.perf_counter() - start
        after = _mesh_cpu(mesh)
        stats.cpu_s = {name: after[name] - before.get(name, 0.0) for name in after}
        stats.cpu_s["bench client"] = time.process_time() - cpu0
        stats.switches = {
            n: [c[0] - switches[n][0], c[1] - switches[n][1]]
            for n, c in _mesh_switches(mesh).items()
        }
        stats.num_tokens, stats.num_requests = sum(counts), len(streams)
        before = mesh.ttft_totals()
        for request in workload.batch1:
            one = RunStats()
            await _stream(stub, request, 2, one)
            stats.batch1_ttft_s.append(one.ttft_s[0])
        after = mesh.ttft_totals()
        stats.batch1_has_media = any(r.image_png_b64 for r in workload.batch1)
        stats.batch1_service_ttft = {
            name: (after[name][0] - before[name][0], after[name][1] - before[name][1])
            for name in after
        }
    return stats


def ttft_histogram(port: int) -> tuple[float, float]:
    """(sum seconds, count) of meshserve:time_to_first_token_seconds at a /metrics port."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "meshserve:time_to_first_token_seconds":
            values = {sample.name.rsplit("_", 1)[-1]: sample.value for sample in family.samples}
            return values["sum"], values["count"]
    raise RuntimeError(f"no time_to_first_token histogram at port {port}")


def _mesh_cpu(mesh: Mesh) -> dict[str, float]:
    """CPU seconds of each service, and of its threads by kind (bench.proc_cpu)."""
    out: dict[str, float] = {}
    for name, pid in mesh.pids.items():
        out[name] = cpu_seconds(pid)
        for group, seconds in thread_groups(pid).items():
            out[f"  {name} {group}"] = seconds
    return out


def _mesh_switches(mesh: Mesh) -> dict[str, tuple[int, int]]:
    """Context switches of each service so far (bench.proc_cpu)."""
    return {name: context_switches(pid) for name, pid in mesh.pids.items()}


# ----------------------------------------------------------------------------- report


def report_rounds(rounds: list[tuple[RunStats, RunStats]], args: argparse.Namespace) -> None:
    shares = []
    for index, (ours, mesh) in enumerate(rounds, 1):
        shares.append(mesh.tokens_per_s / ours.tokens_per_s)
        print(
            f"round {index}  in process {ours.tokens_per_s:8.1f} tok/s   mesh "
            f"{mesh.tokens_per_s:8.1f} tok/s   share {shares[-1]:.3f}"
        )
    print(
        f"throughput share (median of {len(shares)} rounds) {statistics.median(shares):.3f}   "
        f"({args.streams} streams x {args.max_tokens} tokens, {args.workload})"
    )


def report_latency(ours: RunStats, mesh: RunStats) -> None:
    for name, a, b in (
        ("TTFT under load", ours.ttft_s, mesh.ttft_s),
        ("batch-1 TTFT", ours.batch1_ttft_s, mesh.batch1_ttft_s),
        ("inter-token", ours.itl_s, mesh.itl_s),
    ):
        p50 = (quantile_ms(a, 0.5), quantile_ms(b, 0.5))
        p99 = (quantile_ms(a, 0.99), quantile_ms(b, 0.99))
        print(
            f"{name:<16} p50 {p50[0]:7.2f} -> {p50[1]:7.2f} ms (added {p50[1] - p50[0]:+6.2f})"
            f"   p99 {p99[0]:7.2f} -> {p99[1]:7.2f} ms (added {p99[1] - p99[0]:+6.2f})"
        )
    report_batch1_layers(ours, mesh)
    print(f"stream messages per token: mesh {mesh.num_messages / mesh.num_tokens:.3f}")


def report_batch1_layers(ours: RunStats, mesh: RunStats) -> None:
    """Batch-1 TTFT means at each layer of the mesh, from the same requests: the client's
    minus the LM service's own is what the mesh adds around the engine, free of the engine
    step's run-to-run spread that the p50 difference above carries."""
    means = {"in process": statistics.fmean(ours.batch1_ttft_s) * 1e3}
    means["client"] = statistics.fmean(mesh.batch1_ttft_s) * 1e3
    for name, (seconds, count) in mesh.batch1_service_ttft.items():
        means[name] = seconds / count * 1e3 if count else float("nan")
    print(
        f"batch-1 TTFT mean  in process {means['in process']:.2f} ms; mesh: client "
        f"{means['client']:.2f}, gateway {means['gateway']:.2f}, LM service {means['lm']:.2f} ms"
    )
    encoding = "; the image encoder's time included" if mesh.batch1_has_media else ""
    print(
        f"batch-1 TTFT added around the LM service {means['client'] - means['lm']:+.2f} ms "
        f"(client - LM service; of it client <-> gateway "
        f"{means['client'] - means['gateway']:+.2f}{encoding})"
    )


def report_cpu(ours: RunStats, mesh: RunStats) -> None:
    per_token = {name: s / mesh.num_tokens * 1e6 for name, s in mesh.cpu_s.items()}
    idle = {
        name: r * mesh.wall_s / mesh.num_tokens * 1e6 for name, r in mesh.idle_cpu_per_s.items()
    }
    ((name, seconds),) = ours.cpu_s.items()
    print(f"CPU per streamed token (us): {name} alone {seconds / ours.num_tokens * 1e6:.0f}")
    print(f"  {'':<38} {'total':>8} {'idle rate':>10}  (the idle rate's share: background work)")
    for name, us in per_token.items():
        print(f"  {name:<38} {us:8.0f} {idle.get(name, 0.0):10.0f}")
    if "lm" in per_token:
        non_engine = per_token["lm"] - per_token["  lm engine loop"]
        print(f"  {'lm non-engine threads':<38} {non_engine:8.0f}")
    if mesh.switches:
        counts = ", ".join(
            f"{n} {w / mesh.num_tokens:.2f} woken + {p / mesh.num_tokens:.2f} preempted"
            for n, (w, p) in mesh.switches.items()
        )
        print(f"context switches per streamed token (counts, not clocks): {counts}")
    if "encoder-image" in mesh.cpu_s:
        ms = mesh.cpu_s["encoder-image"] / mesh.num_requests * 1e3
        print(f"image encoder CPU per request: {ms:.1f} ms ({mesh.num_requests} requests)")
    # NOTE: text only: with encoders, their towers' CPU is model work as much as the engine's
    if "  lm engine loop" in mesh.cpu_s and not any(n.startswith("encoder") for n in mesh.cpu_s):
        print(
            f"engine's CPU share {engine_cpu_share(mesh):.3f}: the LM engine loop's part of "
            "the CPU of every service and the bench client (on busy cores, what the mesh "
            "leaves the engine)"
        )


def report(rounds: list[tuple[RunStats, RunStats]], args: argparse.Namespace) -> None:
    report_rounds(rounds, args)
    ours, mesh = merged([r[0] for r in rounds]), merged([r[1] for r in rounds])
    print(f"over all rounds: {ours.num_tokens} tokens in process, {mesh.num_tokens} via the mesh")
    report_latency(ours, mesh)
    report_cpu(ours, mesh)
    print(f"KV memory in process: {ours.kv_memory}")
    print(f"KV memory LM service: {mesh.kv_memory}")
    print(load_average())


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--workload", default="text", choices=["text", "image"], help="one image per request")
    add("--layers", type=int, default=4, help="decoder layers (Qwen2-0.5B has 24)")
    add("--vision-depth", type=int, default=2, help="image: vision blocks (Qwen2-VL-2B has 32)")
    add("--dtype", default="float32", choices=["float32", "bfloat16"])
    add("--device", default="cpu")
    add("--streams", type=int, default=32, help="concurrent streams")
    add("--max-tokens", type=int, default=64, help="tokens per stream")
    add("--prompt-len", type=int, default=64, help="about this many tokens (besides an image)")
    add("--batch1", type=int, default=20, help="single requests for TTFT")
    add("--batch1-prompt", type=int, default=32)
    add("--rounds", type=int, default=5, help="engine, mesh, engine, mesh, ...")
    add("--kv-cache-memory", type=int, default=1 << 30)
    add("--idle-seconds", type=float, default=3.0, help="idle CPU sampled before each round")
    add("--up-flag", action="append", default=[], help="one more `meshserve up` flag (repeat)")
    return parser.parse_args()


def build_model(out: Path, args: argparse.Namespace) -> Path:
    if args.workload == "image":
        return build_qwen2_vl_shaped(out, args.layers, args.vision_depth, args.dtype)
    return build_qwen2_shaped(out, args.layers, args.dtype)


def _prompt_size(workload: Workload) -> str:
    if workload.kind == "text":
        return f"{sum(len(r.prompt_ids) for r in workload.streams)} prompt tokens"
    images = len(workload.streams)
    return f"{sum(len(r.text) for r in workload.streams)} prompt characters, {images} images"


def main() -> None:
    args = parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp) / "model", args)
        tokenizer = AutoTokenizer.from_pretrained(path)
        workloads = [make_workload(tokenizer, args, r, IMAGE_SIDE) for r in range(args.rounds)]
        vision = f", vision depth {args.vision_depth}" if args.workload == "image" else ""
        print(
            f"model: Qwen2-0.5B shape, {args.layers} layers{vision}, {args.dtype} on "
            f"{args.device}; {args.workload}: {args.streams} streams, "
            f"{_prompt_size(workloads[0])} a round; "
            f"{load_average()}",
            flush=True,
        )
        rounds, mesh = [], None
        try:
            for index, workload in enumerate(workloads, 1):
                ours = run_in_process(path, workload, args)
                print(f"round {index}: in process done ({ours.wall_s:.1f}s)", flush=True)
                mesh = mesh or Mesh(path, args, Path(tmp))
                rounds.append((ours, asyncio.run(run_mesh_streams(mesh, workload, args))))
                print(f"round {index}: mesh done ({rounds[-1][1].wall_s:.1f}s)", flush=True)
        finally:
            if mesh is not None:
                mesh.stop()
        report(rounds, args)


if __name__ == "__main__":
    main()
