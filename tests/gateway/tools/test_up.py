"""`meshserve up` (launcher: plan, flags, watch, stop; real stacks on loopback) and `chat`."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from gateway.tools.chat import ChatResult, chat_request, embeds_part, format_stats, stream_chat
from gateway.tools.cli import build_parser, main
from gateway.tools.launcher import (
    Stack,
    StackOptions,
    StackPlan,
    StopSignal,
    free_port,
    parse_replicas,
    plan_stack,
)
from gateway.tools.up import stack_options
from protos.channels import channel
from protos.meshserve.v1 import (
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[3]
READY_LINE = re.compile(r"^\s+(\S+)\s+(\d+\.\d+\.\d+\.\d+:\d+)\s+pid (\d+)\s+(.*)$")
GATEWAY_LINE = "meshserve up: gateway on "


# ------------------------------------------------------------------------------ planning


def test_parse_replicas_reads_counts_per_component() -> None:
    assert parse_replicas("image=2,lm=1") == {"image": 2, "lm": 1}
    assert parse_replicas(" audio=3 , video=1,") == {"audio": 3, "video": 1}
    assert parse_replicas(None) == {}


@pytest.mark.parametrize("text", ["gateway=2", "image", "image=0", "image=two", "imag=2"])
def test_parse_replicas_rejects_what_it_cannot_start(text: str) -> None:
    with pytest.raises(ValueError, match="--replicas"):
        parse_replicas(text)


def _plan(replicas: dict[str, int], modalities: list[str]) -> StackPlan:
    ports = iter(range(41000, 41100))
    options = StackOptions(
        model="/models/m",
        gateway_port=50051,
        grace_seconds=7,
        replicas=replicas,
        lm_flags=("--num-blocks", "64"),
        encoder_flags=("--cache-bytes", "1024"),
        gateway_flags=("--task", "generate"),
    )
    return plan_stack(options, modalities, lambda: next(ports))


def test_plan_gives_each_replica_a_port_and_wires_them_into_the_gateway() -> None:
    plan = _plan({"image": 2, "lm": 2}, ["image", "video"])
    names = [spec.name for spec in plan.backends]
    assert names == ["lm-1", "lm-2", "encoder-image-1", "encoder-image-2", "encoder-video"]
    ports = [spec.port for spec in plan.backends]
    assert len(set(ports)) == len(ports) and plan.gateway.port not in ports
    argv = list(plan.gateway.argv)
    assert argv[argv.index("--lm") + 1] == "127.0.0.1:41000,127.0.0.1:41001"
    encoders = [argv[i + 1] for i, a in enumerate(argv) if a == "--encoder"]
    assert encoders == ["image=127.0.0.1:41002,127.0.0.1:41003", "video=127.0.0.1:41004"]
    assert argv[argv.index("--port") + 1] == "50051"
    image = plan.backends[2].argv
    assert image[:5] == ("encoder", "--modality", "image", "--model", "/models/m")
    assert "--cache-bytes" in image and "--num-blocks" in plan.backends[0].argv


def test_every_planned_command_parses_in_its_sub_command() -> None:
    parser = build_parser()
    plan = _plan({"image": 2}, ["image", "audio"])
    for spec in (*plan.backends, plan.gateway):
        args = parser.parse_args(list(spec.argv))
        assert args.command == spec.argv[0]
        assert args.port == spec.port and args.grace_seconds == 7


def test_up_flags_reach_the_children_unchanged() -> None:
    parser = build_parser()
    up = parser.parse_args(
        [
            "up",
            "--model",
            "m",
            "--num-blocks",
            "64",
            "--kv-cache-memory",
            "2GiB",
            "--no-enable-prefix-caching",
            "--hf-overrides",
            '{"max_position_embeddings": 256}',
            "--dtype",
            "bfloat16",
            "--limit-mm-per-prompt",
            "image=2",
            "--trust-remote-code",
            "--cache-bytes",
            "1MiB",
        ]
    )
    options = stack_options(up, replicas={})
    lm = parser.parse_args(["lm", "--model", "m", *options.lm_flags])
    for name in ("num_blocks", "kv_cache_memory", "enable_prefix_caching", "hf_overrides"):
        assert getattr(lm, name) == getattr(up, name), name
    assert lm.dtype == "bfloat16" and lm.trust_remote_code and lm.block_size == 16
    encoder = parser.parse_args(
        ["encoder", "--modality", "image", "--model", "m", *options.encoder_flags]
    )
    assert (encoder.cache_bytes, encoder.dtype, encoder.device) == (1 << 20, "bfloat16", "cpu")
    gateway_argv = ["gateway", "--model", "m", "--lm", "x:1", *options.gateway_flags]
    gateway = parser.parse_args(gateway_argv)
    assert gateway.limit_mm_per_prompt == "image=2" and gateway.trust_remote_code


def test_up_defaults_pass_no_engine_flags() -> None:
    up = build_parser().parse_args(["up", "--model", "m"])
    assert stack_options(up, replicas={}).lm_flags == ()


# ------------------------------------------------------------------- watching and stopping


def _stack_of_sleepers(tmp_path: Path, components: list[str]) -> Stack:
    """A Stack whose children are `sleep` processes standing in for services."""
    ports = iter(range(42000, 42100))
    options = StackOptions(model="m", replicas={"image": components.count("image")})
    plan = plan_stack(options, ["image"], lambda: next(ports))
    stack = Stack(plan, tmp_path, StopSignal())
    for child in stack.children:
        child.log_path.write_text(f"{child.spec.name} line 1\n{child.spec.name} last line\n")
        child.process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    return stack


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stack = _stack_of_sleepers(tmp_path, ["image"])
    stubborn = stack.gateway
    stubborn.signal(signal.SIGKILL)
    stubborn.wait(5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    stubborn.process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)  # let it install its handler
    started = time.monotonic()
    stack.stop(grace_seconds=0, margin=1.0)
    assert time.monotonic() - started < 8
    assert all(not child.is_alive() for child in stack.children)
    assert stubborn.returncode == -signal.SIGKILL


# ------------------------------------------------------------------------------ chat client


@dataclass
class FakeGateway(gateway_pb2_grpc.GatewayServicer):
    requests: list[gateway_pb2.ChatRequest] = field(default_factory=list)

    def Chat(self, request, context):  # noqa: N802 (gRPC method name)
        self.requests.append(request)
        yield gateway_pb2.GenerateResponse(text="Hel", token_ids=[5])
        time.sleep(0.05)
        yield gateway_pb2.GenerateResponse(text="lo!", token_ids=[6, 7])
        yield gateway_pb2.GenerateResponse(
            finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(prompt_tokens=11, completion_tokens=3),
            timings=gateway_pb2.StageTimings(
                validate_ms=0.5, encode_ms=20, prompt_ms=2, time_to_first_token_ms=30, total_ms=90
            ),
            media_cache_hits=[True],
        )


@pytest.fixture
def fake_gateway() -> Iterator[tuple[str, FakeGateway]]:
    servicer = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0).wait()


def test_chat_request_puts_media_before_the_text(tmp_path: Path) -> None:
    image = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=b"png")
    request = chat_request("What?", [image], system="Be brief.", max_tokens=5, seed=3)
    system, user = request.messages
    assert system.role == "system" and system.content[0].text == "Be brief."
    assert user.content[0].media.data == b"png" and user.content[1].text == "What?"
    assert request.sampling.max_tokens == 5 and request.sampling.temperature == 0.0
    assert request.sampling.HasField("seed") and request.sampling.seed == 3


def test_embeds_part_reads_a_tensor_or_a_dict_with_its_grid(tmp_path: Path) -> None:
    import torch

    torch.save({"embeddings": torch.ones(4, 8), "grid_thw": [1, 4, 4]}, tmp_path / "e.pt")
    torch.save(torch.zeros(3, 8, dtype=torch.bfloat16), tmp_path / "t.pt")
    with_grid = embeds_part("image", tmp_path / "e.pt")
    assert list(with_grid.embeddings.embeddings.shape) == [4, 8]
    assert list(with_grid.embeddings.grid_thw) == [1, 4, 4]
    bare = embeds_part("video", tmp_path / "t.pt")
    assert bare.modality == common_pb2.MODALITY_VIDEO
    assert bare.embeddings.embeddings.dtype == common_pb2.DTYPE_BFLOAT16


def test_stream_chat_measures_the_stream(fake_gateway: tuple[str, FakeGateway]) -> None:
    address, _ = fake_gateway
    pieces: list[str] = []
    with channel(address) as ch:
        result = stream_chat(
            gateway_pb2_grpc.GatewayStub(ch), chat_request("hi"), on_text=pieces.append
        )
    assert pieces == ["Hel", "lo!"] and result.text == "Hello!"
    assert result.num_tokens == 3 and result.finish_reason == "stop"
    assert result.cache_hits == (True,) and result.prompt_tokens == 11
    assert result.decode_s >= 0.04 and result.tokens_per_second > 0
    assert result.time_to_first_token_s <= result.total_s
    stats = format_stats(result)
    assert "encoder cache: hit" in stats and "encode 20.0 ms" in stats and "3 tokens" in stats


def test_chat_command_sends_files_and_prints_stats(
    fake_gateway: tuple[str, FakeGateway],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, servicer = fake_gateway
    (tmp_path / "cat.jpg").write_bytes(b"jpeg bytes")
    (tmp_path / "clip.mp4").write_bytes(b"mp4 bytes")
    argv = ["chat", "--gateway", address, "--image", str(tmp_path / "cat.jpg")]
    argv += ["--video", str(tmp_path / "clip.mp4"), "--num-frames", "4", "What is it?"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "Hello!"
    assert "TTFT" in err and "tok/s" in err and "encoder cache: hit" in err
    (request,) = servicer.requests
    parts = request.messages[0].content
    assert [p.media.modality for p in parts[:2]] == [
        common_pb2.MODALITY_IMAGE,
        common_pb2.MODALITY_VIDEO,
    ]
    assert parts[0].media.data == b"jpeg bytes" and parts[1].media.options.num_frames == 4
    assert parts[2].text == "What is it?"


def test_chat_command_reports_an_unreachable_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--gateway", f"127.0.0.1:{free_port()}", "--timeout", "2", "hi"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


# ------------------------------------------------------------------------ real stacks (e2e)


class UpProcess:
    """`meshserve up ...` in its own process group, stdout read line by line."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.stderr = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.tools.cli", "up", *argv],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout: float = 150.0) -> str:
        """The gateway address, once `up` says every service is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith(GATEWAY_LINE):
                return line[len(GATEWAY_LINE) :].split()[0]
        raise AssertionError(f"meshserve up did not get ready:\n{self.log()}")

    def services(self) -> dict[str, tuple[str, int, str]]:
        """name -> (address, pid, details) from the ready lines."""
        found = {}
        for line in self.stdout:
            match = READY_LINE.match(line)
            if match:
                found[match[1]] = (match[2], int(match[3]), match[4])
        return found

    def log(self) -> str:
        self.stderr.flush()
        return self.log_path.read_text(errors="replace")[-6000:] + "".join(self.stdout[-20:])

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def cleanup(self) -> None:
        """Whatever happened: no `up`, no child of it."""
        pids = [pid for _, pid, _ in self.services().values()]
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        for pid in pids:
            if is_running(pid):
                os.killpg(pid, signal.SIGKILL)
        self.stderr.close()


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[callable]:
    started: list[UpProcess] = []

    def start(*argv: str) -> UpProcess:
        up = UpProcess(list(argv), tmp_path / f"up-{len(started)}.log")
        started.append(up)
        return up

    try:
        yield start
    finally:
        for up in started:
            up.cleanup()


def _image(index: int) -> bytes:
    """A distinct 56x56 PNG per index (so every request really runs the tower)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), (index * 12 % 256, 80, 200 - index)).save(buffer, format="PNG")
    return buffer.getvalue()


def _ask_about_image(stub: gateway_pb2_grpc.GatewayStub, index: int) -> ChatResult:
    part = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=_image(index))
    result = stream_chat(stub, chat_request("What is this?", [part], max_tokens=3), timeout=60)
    assert result.num_tokens >= 1 and result.finish_reason in ("stop", "length")
    return result


def _encoder_requests(address: str) -> int:
    with channel(address) as ch:
        stub = encoder_pb2_grpc.EncoderStub(ch)
        return stub.GetInfo(encoder_pb2.GetEncoderInfoRequest(), timeout=10).num_requests


def test_up_restarts_a_killed_image_replica_and_sigterm_leaves_no_child(
    tiny_model, start_up
) -> None:
    model = str(tiny_model("qwen2_vl"))
    up = start_up("--model", model, "--replicas", "image=2", "--port", str(free_port()),
                  "--num-blocks", "128", "--grace-seconds", "5")  # fmt: skip
    gateway = up.wait_ready()
    services = up.services()
    assert set(services) == {"lm", "encoder-image-1", "encoder-image-2", "encoder-video", "gateway"}
    assert (
        "kv_blocks=128 x 16" in services["lm"][2]
        and "cache=256 MiB" in services["encoder-video"][2]
    )
    assert services["gateway"][0] == gateway
    replicas = [services[f"encoder-image-{i}"] for i in (1, 2)]
    with channel(gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        for index in range(10):
            _ask_about_image(stub, index)
        served = [_encoder_requests(address) for address, _, _ in replicas]
        assert all(count > 0 for count in served) and sum(served) == 10, served
        os.killpg(replicas[0][1], signal.SIGKILL)  # a crash, mid-way
        killed = time.monotonic()
        for index in range(10, 20):
            _ask_about_image(stub, index)  # every later request still succeeds
        restarted = _wait_serving_again(up, replicas[0], timeout=120)
        print(f"\nencoder-image-1 SERVING again {restarted - killed:.1f}s after SIGKILL")
        time.sleep(1.5)  # the gateway's next health check of it
        for index in range(20, 26):
            _ask_about_image(stub, index)
        assert _encoder_requests(replicas[0][0]) >= 2  # capacity is back: it takes requests
    assert up.process.poll() is None, up.log()
    code = up.terminate()
    assert code == 1  # a child died during the run: reported, and the exit says so
    log = up.log()
    assert "encoder-image-1 (pid" in log and "was killed by SIGKILL; restarting it in 1s" in log
    assert "encoder-image-1 restarted as pid" in log and "is SERVING again" in log
    pids = [pid for _, pid, _ in services.values()] + _restarted_pids(log)
    left = [pid for pid in pids if is_running(pid)]
    assert left == [], f"still running after SIGTERM: {left}"


def _restarted_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"restarted as pid (\d+)", log)]


def _wait_serving_again(up: UpProcess, service: tuple[str, int, str], timeout: float) -> float:
    """When the restarted replica at `service`'s address is SERVING (a new pid): monotonic."""
    from protos.channels import health_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _restarted_pids(up.log()) and health_status(service[0], timeout=1.0) == "SERVING":
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"not SERVING again after {timeout}s:\n{up.log()}")


def test_up_reports_a_service_that_fails_to_load(tiny_model, start_up) -> None:
    up = start_up("--model", str(tiny_model("llama")), "--port", str(free_port()),
                  "--kv-cache-memory", "1")  # fmt: skip
    code = up.process.wait(120)
    log = up.log()
    assert code == 1, log
    # status 2: the child refused a user mistake (meshserve exits 2 for those, with a sentence)
    assert "lm (pid" in log and "exited with status 2 while the stack was starting" in log
    assert "raise --kv-cache-memory" in log  # the child's own last log lines
    assert "the services' logs are in" in log


def test_up_refuses_replicas_of_a_modality_the_model_lacks(
    tiny_model, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["up", "--model", str(tiny_model("qwen2_vl")), "--replicas", "audio=2"])
    assert code == 2
    assert "takes image, video" in capsys.readouterr().err


def test_up_embedded_serves_in_one_process_and_stops_on_sigterm(tiny_model, start_up) -> None:
    http_port = free_port()
    up = start_up("--embedded", "--model", str(tiny_model("qwen2_vl")),
                  "--port", str(free_port()), "--num-blocks", "64", "--grace-seconds", "2",
                  "--http-port", str(http_port))  # fmt: skip
    gateway = up.wait_ready()
    assert "kv_blocks=64 x 16" in up.services()["embedded"][2]
    with channel(gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        first, again = _ask_about_image(stub, 0), _ask_about_image(stub, 0)
    assert first.text == again.text and again.cache_hits == (True,)  # greedy; cached
    assert f"OpenAI HTTP API on http://127.0.0.1:{http_port}/v1" in "".join(up.stdout)
    assert httpx.get(f"http://127.0.0.1:{http_port}/health").status_code == 200
    assert up.terminate() == 0
