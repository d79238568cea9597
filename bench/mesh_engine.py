"""bench/mesh.py's in-process baseline, in a fresh process as the LM service is one:
`python -m bench.mesh_engine` reads a job (JSON) on stdin and prints its RunStats as JSON on
the line starting with RESULT_PREFIX.

text: the Engine stepped directly (add_request / step). image: the offline `LLM` API's stack
in this one process (`gateway.app.local_backends` + `build_orchestrator`, as `LLM.__init__`
builds it: the vision tower, the engine loop, prompt building, detokenizing), each request
streamed, since `LLM.generate` returns whole outputs and would hide time to first token.

NOTE: both run on a thread that is not the main one, as the LM service steps its engine on
its "engine-loop" thread: on these CPUs torch runs its ops from the main thread up to 1.5x
slower than from another thread when the cores are busy (OpenMP's team), which would flatter
the mesh.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.mesh_stats import RunStats
from bench.mesh_workload import Request, Workload

RESULT_PREFIX = "mesh_engine result: "
_IDS = itertools.count()
_LOADER = ThreadPoolExecutor(1, thread_name_prefix="load")  # stays up, as asyncio's does


def run_text(model: str, engine_kwargs: dict[str, Any], workload: Workload) -> RunStats:
    from bench.memory_bound import kv_memory_line
    from lm_service import Engine, EngineConfig, SamplingParams

    # NOTE: loaded on another thread than the stepping one, as the LM service loads it in
    # asyncio.to_thread. It matters: loaded on the stepping thread the engine burned 15-18 ms
    # of CPU per token here against 10-11 ms (the LM service's figure), on 2 shared cores; not
    # malloc arenas (MALLOC_ARENA_MAX=1 kept it) nor torch's thread count, which stays 2
    config = EngineConfig(model=model, **engine_kwargs)
    engine = _LOADER.submit(Engine, config).result()
    stats = RunStats(kv_memory=kv_memory_line(engine.cache_memory))
    params = SamplingParams(max_tokens=workload.max_tokens, temperature=0.0, ignore_eos=True)
    engine.generate([workload.warmup.prompt_ids], SamplingParams(max_tokens=2, temperature=0.0))
    cpu0, start = time.process_time(), time.perf_counter()
    added = {engine.add_request(f"r{i}", r.prompt_ids, params): start
             for i, r in enumerate(workload.streams)}  # fmt: skip
    _drain(engine, added, stats)
    stats.wall_s = time.perf_counter() - start
    stats.cpu_s["engine process"] = time.process_time() - cpu0
    stats.num_requests = len(workload.streams)
    one = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    for i, request in enumerate(workload.batch1):
        sent = time.perf_counter()
        engine.add_request(f"b{i}", request.prompt_ids, one)
        first = None
        while engine.has_unfinished():
            if engine.step() and first is None:
                first = time.perf_counter()
        stats.batch1_ttft_s.append(first - sent)
    return stats


def _drain(engine: Any, added: dict[str, float], stats: RunStats) -> None:
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
                stats.record(now - added[rid], now - first[rid], counts[rid])
    stats.num_tokens = sum(counts.values())


def run_image(model: str, engine_kwargs: dict[str, Any], workload: Workload) -> RunStats:
    from bench.memory_bound import kv_memory_line
    from gateway.app import build_orchestrator, local_backends, served_model
    from lm_service import EngineConfig

    config = EngineConfig(model=model, **engine_kwargs)
    served = served_model(model)
    encoders, lm = local_backends(
        config, served, encoder_dtype=config.dtype, encoder_device=config.device
    )
    orchestrator = build_orchestrator(served, encoders, lm)
    stats = RunStats(kv_memory=kv_memory_line(lm.loop.engine.cache_memory))
    asyncio.run(_stream_all(orchestrator, workload, stats))
    return stats


async def _stream_all(orchestrator: Any, workload: Workload, stats: RunStats) -> None:
    await _stream(orchestrator, workload.warmup, 2, RunStats())
    cpu0, start = time.process_time(), time.perf_counter()
    requests = workload.streams
    counts = await asyncio.gather(
        *(_stream(orchestrator, r, workload.max_tokens, stats) for r in requests)
    )
    stats.wall_s = time.perf_counter() - start
    stats.cpu_s["LLM process"] = time.process_time() - cpu0
    stats.num_tokens, stats.num_requests = sum(counts), len(requests)
    for request in workload.batch1:
        one = RunStats()
        await _stream(orchestrator, request, 2, one)
        stats.batch1_ttft_s.append(one.ttft_s[0])


async def _stream(orchestrator: Any, request: Request, max_tokens: int, stats: RunStats) -> int:
    from gateway.pipeline.types import GenerationRequest, MediaInput
    from protos.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    media = (MediaInput("image", data=request.image_png),) if request.image_png_b64 else ()
    rid = f"bench-{next(_IDS)}"
    sent = time.perf_counter()
    first = last = None
    num_tokens = 0
    async for chunk in orchestrator.generate(
        GenerationRequest(rid, params, prompt=request.text, media=media)
    ):
        last = time.perf_counter()
        first = first or last
        num_tokens += len(chunk.token_ids)
        stats.num_messages += 1
    stats.record(last - sent, last - first, num_tokens)
    return num_tokens


def main() -> None:
    job = json.loads(sys.stdin.read())
    workload = Workload.from_json(job["workload"])
    run = run_text if workload.kind == "text" else run_image
    outcome: list[RunStats | BaseException] = []

    def target() -> None:
        try:
            outcome.append(run(job["model"], job["engine"], workload))
        except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
            outcome.append(error)

    # the names of the threads the LM service and the LLM API run these on
    name = "engine-loop" if workload.kind == "text" else "llm-loop"
    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    print(RESULT_PREFIX + outcome[0].to_json(), flush=True)


if __name__ == "__main__":
    main()
