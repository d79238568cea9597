"""The LanguageModel gRPC service as a real process on loopback."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.tools.tiny_models import tiny_model_path
from lm_service import Engine, EngineConfig, SamplingParams
from protos.channels import channel
from protos.meshserve.v1 import common_pb2, lm_pb2, lm_pb2_grpc
from tests.services import Service, start

NUM_BLOCKS = 64
BLOCK_SIZE = 4


@pytest.fixture(scope="module")
def lm() -> Iterator[Service]:
    service = start(
        "lm",
        [
            "--model",
            str(tiny_model_path("llama")),
            "--num-blocks",
            str(NUM_BLOCKS),
            "--block-size",
            str(BLOCK_SIZE),
            "--max-model-len",
            "256",
        ],
    )
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def stub(lm: Service) -> Iterator[lm_pb2_grpc.LanguageModelStub]:
    ch = channel(lm.address)
    yield lm_pb2_grpc.LanguageModelStub(ch)
    ch.close()


def _request(prompt: list[int], max_tokens: int, **sampling: object) -> lm_pb2.LMGenerateRequest:
    return lm_pb2.LMGenerateRequest(
        prompt_token_ids=prompt,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, **sampling),
    )


def _idle_free_blocks(stub: lm_pb2_grpc.LanguageModelStub, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    load = stub.GetLoad(lm_pb2.GetLoadRequest())
    while (load.num_running or load.num_waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
        load = stub.GetLoad(lm_pb2.GetLoadRequest())
    return load.num_free_blocks


def test_stream_matches_the_offline_engine(stub: lm_pb2_grpc.LanguageModelStub) -> None:
    prompt = [1, 20, 30, 40, 50]
    tokens: list[int] = []
    last = None
    for reply in stub.Generate(_request(prompt, 12, logprobs=2, ignore_eos=True)):
        tokens.extend(reply.token_ids)
        assert len(reply.logprobs) == len(reply.token_ids)
        last = reply
    assert last is not None and last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    engine = Engine(
        EngineConfig(
            model=str(tiny_model_path("llama")), block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS
        )
    )
    expected = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0))[0]
    assert tokens == list(expected.token_ids)


def test_concurrent_streams_share_the_engine(stub: lm_pb2_grpc.LanguageModelStub) -> None:
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        results[i] = [t for r in stub.Generate(_request([1, 10 + i, 11], 8)) for t in r.token_ids]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(8)) and all(len(v) == 8 for v in results.values())
    alone = [t for r in stub.Generate(_request([1, 13, 11], 8)) for t in r.token_ids]
    assert results[3] == alone


def test_one_generate_stream_carries_many_requests_one_message_per_step(
    stub: lm_pb2_grpc.LanguageModelStub,
) -> None:
    """The gateway's path: requests multiplexed over one GenerateStream; a bad request fails
    alone with its status; an abort ends its request; the rest equal their own streams."""
    alone = [t for r in stub.Generate(_request([1, 12, 11], 8)) for t in r.token_ids]
    good = [_request([1, 12, 11], 8, ignore_eos=True), _request([1, 14, 11], 8, ignore_eos=True)]
    for i, request in enumerate(good):
        request.request_id = f"mux-{i}"
    bad = _request([1, 2], 4, top_p=2.0)
    bad.request_id = "mux-bad"
    long = _request([1, 15], 200, ignore_eos=True)
    long.request_id = "mux-long"
    adds = [lm_pb2.LMStreamRequest(generate=r) for r in (*good, bad, long)]
    sent = threading.Event()

    def messages() -> Iterator[lm_pb2.LMStreamRequest]:
        yield from adds
        sent.wait(30)  # abort the long one once its first tokens came back
        yield lm_pb2.LMStreamRequest(abort_request_id="mux-long")

    tokens: dict[str, list[int]] = {}
    endings: dict[str, object] = {}
    num_good_messages = 0  # messages carrying mux-0 or mux-1 (mux-long's count on timing)
    for reply in stub.GenerateStream(messages(), timeout=60):
        num_good_messages += any(o.request_id in ("mux-0", "mux-1") for o in reply.outputs)
        for output in reply.outputs:
            if output.error_code:
                endings[output.request_id] = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                assert output.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
                assert "top_p" in output.error_message
                continue
            tokens.setdefault(output.request_id, []).extend(output.step.token_ids)
            if output.request_id == "mux-long":
                sent.set()
            if output.step.finish_reason:
                endings[output.request_id] = output.step.finish_reason
    assert endings == {
        "mux-0": common_pb2.FINISH_REASON_LENGTH,
        "mux-1": common_pb2.FINISH_REASON_LENGTH,
        "mux-bad": grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "mux-long": common_pb2.FINISH_REASON_ABORT,
    }
    assert tokens["mux-0"] == alone and len(tokens["mux-1"]) == 8
    assert len(tokens["mux-long"]) < 200
    # both good requests decode in the same steps: one message carried both, not one each
    assert num_good_messages < 2 * 8
    assert _idle_free_blocks(stub) == NUM_BLOCKS


def _generate_stream(
    stub: lm_pb2_grpc.LanguageModelStub, request: lm_pb2.LMGenerateRequest, **kwargs: object
) -> Iterator[lm_pb2.LMGenerateResponse]:
    """One request over GenerateStream (the gateway's path), its steps as Generate's replies;
    closing the generator cancels the call."""
    request.request_id = "one"
    call = stub.GenerateStream(iter([lm_pb2.LMStreamRequest(generate=request)]), **kwargs)
    try:
        for reply in call:
            for output in reply.outputs:
                yield output.step
    finally:
        call.cancel()


def _generate(
    stub: lm_pb2_grpc.LanguageModelStub, request: lm_pb2.LMGenerateRequest, **kwargs: object
) -> Iterator[lm_pb2.LMGenerateResponse]:
    call = stub.Generate(request, **kwargs)
    try:
        yield from call
    finally:
        call.cancel()


# Generate is one request on a StreamConnection of its own: both RPCs abort the same way.
BOTH_RPCS = pytest.mark.parametrize("rpc", [_generate_stream, _generate], ids=["stream", "one"])


@BOTH_RPCS
def test_cancel_frees_every_block(stub: lm_pb2_grpc.LanguageModelStub, rpc: object) -> None:
    idle = _idle_free_blocks(stub)
    call = rpc(stub, _request([1] + list(range(20, 60)), 200, ignore_eos=True))
    first = next(call)
    assert first.token_ids
    assert stub.GetLoad(lm_pb2.GetLoadRequest()).num_free_blocks < idle
    call.close()  # the generator's close cancels its call
    assert _idle_free_blocks(stub) == idle


@BOTH_RPCS
def test_deadline_aborts_and_frees_blocks(stub: lm_pb2_grpc.LanguageModelStub, rpc: object) -> None:
    idle = _idle_free_blocks(stub)
    with pytest.raises(grpc.RpcError) as info:
        for _ in rpc(stub, _request([1, 5, 6], 240, ignore_eos=True), timeout=0.05):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _idle_free_blocks(stub) == idle


def test_prompt_that_never_fits_is_resource_exhausted(stub: lm_pb2_grpc.LanguageModelStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(_request([1] * 300, 4)))
    assert info.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "300" in info.value.details()


def test_bad_sampling_params_name_the_field(stub: lm_pb2_grpc.LanguageModelStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(_request([1, 2, 3], 4, top_p=1.5)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_p" in info.value.details()
    # the service is unharmed
    assert [t for r in stub.Generate(_request([1, 2, 3], 2)) for t in r.token_ids]


def test_info_load_and_reflection(lm: Service, stub: lm_pb2_grpc.LanguageModelStub) -> None:
    info = stub.GetInfo(lm_pb2.GetLMInfoRequest())
    assert (info.architecture, info.num_blocks, info.block_size) == (
        "LlamaForCausalLM",
        NUM_BLOCKS,
        BLOCK_SIZE,
    )
    assert info.max_model_len == 256 and info.model_impl == "native"
    load = stub.GetLoad(lm_pb2.GetLoadRequest())
    assert load.num_blocks == NUM_BLOCKS
    ch = channel(lm.address)
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    reply = next(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {"meshserve.v1.LanguageModel", "grpc.health.v1.Health"} <= names
    ch.close()


def _policies(pid: int) -> dict[int, tuple[str, int]]:
    """Each live thread of `pid`: its OS name and scheduling policy."""
    found = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            found[tid] = (name, os.sched_getscheduler(tid))
        except (ProcessLookupError, FileNotFoundError):
            continue  # the thread ended meanwhile
    return found


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling only")
def test_helper_threads_run_batch_and_the_engine_threads_do_not(
    lm: Service, stub: lm_pb2_grpc.LanguageModelStub
) -> None:
    list(stub.Generate(_request([1, 2, 3], 4, ignore_eos=True)))  # the engine's workers exist
    pid, deadline = lm.process.pid, time.monotonic() + 30
    while True:  # the first sweep runs a second after the model loaded
        found = _policies(pid)
        main = found.pop(pid)
        engine = {t: p for t, (n, p) in found.items() if n.startswith("engine-loop")}
        helpers = {t: p for t, (n, p) in found.items() if t not in engine}
        if all(p == os.SCHED_BATCH for p in helpers.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert main[1] == os.SCHED_OTHER  # the event loop: woken, it may preempt
    assert engine and all(p == os.SCHED_OTHER for p in engine.values()), found
    assert helpers and all(p == os.SCHED_BATCH for p in helpers.values()), found


def test_health_answers_with_more_streams_than_any_thread_pool(
    lm: Service, stub: lm_pb2_grpc.LanguageModelStub
) -> None:
    """100 open streams (more than max_num_seqs and any worker pool): health and load answer,
    and cancelling every stream returns every block."""
    from protos.channels import health_status

    idle = _idle_free_blocks(stub)
    calls = [stub.Generate(_request([1, 7, i % 300], 200, ignore_eos=True)) for i in range(100)]
    started = time.monotonic()
    assert health_status(lm.address, timeout=2.0) == "SERVING"
    load = stub.GetLoad(lm_pb2.GetLoadRequest(), timeout=2.0)
    assert load.num_running + load.num_waiting > 0
    assert time.monotonic() - started < 4.0
    for call in calls:
        call.cancel()
    assert _idle_free_blocks(stub, timeout=15.0) == idle


def test_sigterm_drains_even_with_a_watching_client() -> None:
    """A gateway's dns:/// channel holds a health Watch open; SIGTERM must still drain and
    exit: NOT_SERVING is visible, an in-flight stream finishes, the process exits 0."""
    import signal

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos.channels import health_status

    service = start("lm", ["--model", str(tiny_model_path("llama")), "--num-blocks", "64",
                           "--grace-seconds", "5"])  # fmt: skip
    watcher = channel(f"dns:///localhost:{service.address.rsplit(':', 1)[1]}")
    try:
        watch = health_pb2_grpc.HealthStub(watcher).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stub = lm_pb2_grpc.LanguageModelStub(channel(service.address))
        call = stub.Generate(_request([1, 2, 3], 60, ignore_eos=True))
        first = next(call)
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert health_status(service.address) == "NOT_SERVING"
        rest = [t for reply in call for t in reply.token_ids]
        assert len(first.token_ids) + len(rest) == 60  # the in-flight stream finished
        assert service.process.wait(20) == 0
    finally:
        watcher.close()
        service.stop()
