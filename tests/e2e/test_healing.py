"""Faults on real processes: the LM killed under `meshserve up` (restarted, the gateway serves
again by itself), the LM of a gateway run alone frozen (SIGSTOP) and killed. A client sees
nothing but UNAVAILABLE with a sentence naming the service; each recovery time is printed
(`pytest -s`)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.channels import channel, health_status
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from protos.ports import free_port
from tests.gateway.tools.test_up import UpProcess, is_running
from tests.services import restart, start

STALL_SECONDS = 2.0
LONG = 480  # tokens: a stream still running when the fault hits


def _request(max_tokens: int) -> gateway_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return gateway_pb2.GenerateRequest(prompt="hello there", sampling=sampling)


def _generate(stub: gateway_pb2_grpc.GatewayStub, max_tokens: int = 2) -> None:
    for _ in stub.Generate(_request(max_tokens), timeout=20):
        pass


def _fault_mid_stream(stub: gateway_pb2_grpc.GatewayStub, fault: Callable[[], None]) -> tuple:
    """Starts a long stream, runs `fault` once its first reply is in; (error, seconds from the
    fault to the end of the stream). The error is None if the stream finished first."""
    replies = stub.Generate(_request(LONG), timeout=60)
    next(replies)
    fault()
    started = time.monotonic()
    try:
        for _ in replies:
            pass
    except grpc.RpcError as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def _wait_health(address: str, want: str, timeout: float) -> float:
    """Seconds until `address`'s overall health is `want`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if health_status(address, timeout=1.0) == want:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{address} not {want} within {timeout}s")


def _serve_again(
    stub: Any, lm_address: str, timeout: float, gateway_address: str | None = None
) -> tuple[float, float, set[str]]:
    """Asks until a request succeeds; every failure must be UNAVAILABLE naming the LM, and
    fast. (seconds until the LM is SERVING, until the gateway serves again; the gateway's
    health statuses seen meanwhile)."""
    started = time.monotonic()
    lm_serving = None
    health_seen: set[str] = set()
    while time.monotonic() - started < timeout:
        if lm_serving is None and health_status(lm_address, timeout=0.5) == "SERVING":
            lm_serving = time.monotonic() - started
        if gateway_address is not None:
            health_seen.add(health_status(gateway_address, timeout=1.0))
        asked = time.monotonic()
        try:
            _generate(stub)
            served = time.monotonic() - started
            return served if lm_serving is None else lm_serving, served, health_seen
        except grpc.RpcError as exc:
            _assert_names_the_lm(exc, lm_address)
            assert time.monotonic() - asked < 2.0, "a refusal must be fast"
        time.sleep(0.1)
    raise AssertionError(f"not served again within {timeout}s")


def _assert_names_the_lm(exc: grpc.RpcError, lm_address: str) -> None:
    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
    assert f"the language model service at {lm_address} " in exc.details(), exc.details()
    assert "retry shortly" in exc.details(), exc.details()


# ------------------------------------------------------------------------ under `up`


@pytest.fixture
def up_llama(tiny_model, tmp_path: Path) -> Iterator[UpProcess]:
    """`meshserve up` with the tiny llama (an LM and a gateway); nothing of it left after."""
    up = UpProcess(["--model", str(tiny_model("llama")), "--port", str(free_port()),
                    "--num-blocks", "64", "--grace-seconds", "2"], tmp_path / "up.log")  # fmt: skip
    try:
        yield up
    finally:
        restarted = re.findall(r"restarted as pid (\d+)", up.log())
        up.cleanup()
        for pid in map(int, restarted):
            if is_running(pid):
                os.killpg(pid, signal.SIGKILL)


def test_up_restarts_a_killed_lm_and_the_gateway_serves_again(up_llama: UpProcess) -> None:
    up = up_llama
    gateway = up.wait_ready()
    services = up.services()
    lm_address, lm_pid, _ = services["lm"]
    gateway_pid = services["gateway"][1]
    with channel(gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        _generate(stub)
        error, _ = _fault_mid_stream(stub, lambda: os.killpg(lm_pid, signal.SIGKILL))
        killed = time.monotonic()
        if error is not None:  # the stream was cut: a sentence, then the transport's words
            _assert_names_the_lm(error, lm_address)
            assert "failed mid-stream; retry shortly (" in error.details()
        lm_serving, served, health_seen = _serve_again(stub, lm_address, 120, gateway)
    assert is_running(gateway_pid) and "gateway restarted" not in up.log()  # not restarted
    log = up.log()
    assert f"lm (pid {lm_pid}) was killed by SIGKILL; restarting it in 1s (restart 1)" in log
    assert "lm restarted as pid" in log
    assert "NOT_SERVING" in health_seen  # the gateway's health told the truth meanwhile
    print(
        f"\nup, LM SIGKILL: LM SERVING again after {lm_serving:.1f}s, gateway served after "
        f"{served:.1f}s ({served - lm_serving:.1f}s after the LM); stream error: "
        f"{error.details() if error else 'none (finished first)'}; "
        f"{time.monotonic() - killed:.1f}s in all"
    )
    assert served - lm_serving < 5.0  # bounded reconnect: seconds, not minutes
    assert up.terminate() == 1


# ---------------------------------------------------------------- a gateway run alone


class Pair:
    """An LM and a gateway pointed at it (`--stall-timeout 2`); the LM may be replaced."""

    def __init__(self, model: str) -> None:
        self.lm = start("lm", ["--model", model, "--num-blocks", "64", "--grace-seconds", "1"])
        gateway_args = ["--model", model, "--lm", self.lm.address, "--grace-seconds", "1"]
        try:
            self.gateway = start("gateway", [*gateway_args, "--stall-timeout", f"{STALL_SECONDS}"])
        except BaseException:
            self.lm.stop()
            raise
        self.channel = channel(self.gateway.address)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    def signal_lm(self, sig: int) -> None:
        os.killpg(self.lm.process.pid, sig)

    def stop(self) -> None:
        self.channel.close()
        for service in (self.gateway, self.lm):
            if service.process.poll() is None:
                os.killpg(service.process.pid, signal.SIGCONT)
            service.stop()


@pytest.fixture(scope="module")
def pair(tiny_model_module: str) -> Iterator[Pair]:
    started = Pair(tiny_model_module)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def tiny_model_module() -> str:
    from gateway.tools.tiny_models import tiny_model_path

    return str(tiny_model_path("llama"))


def test_a_frozen_lm_is_noticed_and_refused_fast_then_served_again(pair: Pair) -> None:
    _generate(pair.stub)
    try:
        error, stream_s = _fault_mid_stream(pair.stub, lambda: pair.signal_lm(signal.SIGSTOP))
        not_serving_s = stream_s + _wait_health(pair.gateway.address, "NOT_SERVING", 10)
        asked = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            _generate(pair.stub)
        refused_s = time.monotonic() - asked
    finally:
        pair.signal_lm(signal.SIGCONT)
    serving_s = _wait_health(pair.gateway.address, "SERVING", timeout=15)
    _generate(pair.stub)
    print(
        f"\nSIGSTOP: in-flight stream ended {stream_s:.1f}s after it "
        f"({error.details() if error else 'finished first'}); gateway NOT_SERVING "
        f"{not_serving_s:.1f}s after it; new request refused in {refused_s * 1e3:.0f} ms "
        f"({refused.value.details()}); SERVING again {serving_s:.1f}s after SIGCONT"
    )
    if error is not None:
        _assert_names_the_lm(error, pair.lm.address)
        assert f"sent nothing for {STALL_SECONDS:g}s" in error.details()
        assert STALL_SECONDS - 0.5 < stream_s < STALL_SECONDS + 4
    assert not_serving_s < 8.0 and refused_s < 1.0
    _assert_names_the_lm(refused.value, pair.lm.address)
    assert "stopped answering health checks" in refused.value.details()


def test_a_gateway_alone_serves_again_once_its_lm_is_back(pair: Pair) -> None:
    _generate(pair.stub)
    pair.signal_lm(signal.SIGKILL)
    pair.lm.process.wait(10)
    with pytest.raises(grpc.RpcError) as refused:
        _generate(pair.stub)
    _assert_names_the_lm(refused.value, pair.lm.address)
    down_at = time.monotonic()
    pair.lm = restart(pair.lm)  # same port; returns once it is SERVING
    lm_back = time.monotonic()
    _, served, _ = _serve_again(pair.stub, pair.lm.address, timeout=30)
    print(
        f"\ngateway alone, LM SIGKILL: refused with {refused.value.details()!r}; LM restarted "
        f"by hand in {lm_back - down_at:.1f}s; gateway served {served:.1f}s after it was SERVING"
    )
    assert served < 5.0
