"""The mesh under abuse, as real processes on loopback: undecodable bytes on every RPC of every
service, the gateway's API key and TLS, admission bounds, the video encoder's memory over
many unique videos, and each service's metrics scraped over HTTP and parsed."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client.parser import text_string_to_metric_families

from gateway.tools.cli import main as meshserve
from gateway.tools.tiny_models import tiny_model_path
from protos.auth import bearer_metadata
from protos.channels import channel
from protos.meshserve.v1 import (
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    lm_pb2,
)
from protos.ports import free_port
from tests.e2e.wire import CORRUPT, bad_utf8, call_raw, methods_of
from tests.encoder_service.samples import make_video
from tests.services import Service, start, start_many
from tests.tls import CertFiles, self_signed

KEY = "e2e-key-7f3a"
MAX_QUEUED_ITEMS = 40


@dataclass
class Mesh:
    lm: Service
    video: Service
    gateway: Service
    cert: CertFiles
    metrics_ports: dict[str, int]

    def gateway_channel(self, tls: bool = True) -> grpc.Channel:
        return channel(self.gateway.address, self.cert.cert_pem if tls else None)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("guard")
    cert = self_signed(folder)
    (folder / "api_key").write_text(KEY + "\n")
    ports = {name: free_port() for name in ("lm", "video", "gateway")}
    model = ["--model", str(tiny_model_path("qwen2_vl"))]
    lm_args = "--block-size 4 --num-blocks 256 --max-num-seqs 1 --max-queued-requests 2"
    lm, video = start_many(
        [
            ("lm", [*model, *lm_args.split(), "--metrics-port", str(ports["lm"])]),
            ("encoder", [*model, "--modality", "video", *_metrics(ports["video"]),
                         "--max-queued-items", str(MAX_QUEUED_ITEMS)]),
        ]
    )  # fmt: skip
    security = ["--api-key-file", str(folder / "api_key")]
    security += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    try:
        gateway = start(
            "gateway",
            [*model, "--lm", lm.address, f"--encoder=video={video.address}", *security,
             *_metrics(ports["gateway"])],
            root_certificates=cert.cert_pem,
        )  # fmt: skip
    except BaseException:
        lm.stop()
        video.stop()
        raise
    yield Mesh(lm, video, gateway, cert, ports)
    gateway.stop()
    with ThreadPoolExecutor(2) as pool:  # each drains for a few seconds: side by side
        list(pool.map(Service.stop, (video, lm)))


def _metrics(port: int) -> list[str]:
    return ["--metrics-port", str(port)]


def _video(seed: int) -> bytes:
    frames = np.random.default_rng(seed).integers(0, 256, (4, 32, 32, 3), np.uint8)
    return make_video(frames, fps=4)


def _chat(prompt: str, max_tokens: int = 4, video: bytes | None = None) -> gateway_pb2.ChatRequest:
    content = [gateway_pb2.ContentPart(text=prompt)]
    if video is not None:
        media = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_VIDEO, data=video)
        content.insert(0, gateway_pb2.ContentPart(media=media))
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatMessage(role="user", content=content)], sampling=sampling
    )


def _stream(ch: grpc.Channel, request: gateway_pb2.ChatRequest, metadata: tuple = ()) -> list:
    return list(gateway_pb2_grpc.GatewayStub(ch).Chat(request, metadata=metadata, timeout=120))


# ------------------------------------------------------------------------ undecodable bytes

SERVICES = {
    "gateway": gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
    "lm": lm_pb2.DESCRIPTOR.services_by_name["LanguageModel"],
    "video": encoder_pb2.DESCRIPTOR.services_by_name["Encoder"],
}
OPEN = (
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)


@pytest.mark.parametrize("name", list(SERVICES))
def test_random_bytes_on_every_rpc_are_invalid_argument_without_traceback(
    mesh: Mesh, name: str
) -> None:
    service: Service = getattr(mesh, name)
    is_gateway = name == "gateway"
    metadata = bearer_metadata(KEY) if is_gateway else ()
    num_bad = 0
    with channel(service.address, mesh.cert.cert_pem if is_gateway else None) as ch:
        for method in methods_of(SERVICES[name], *OPEN):
            for payload in (CORRUPT, bad_utf8(method.input_type)):
                if payload is None:
                    continue
                code, details = call_raw(ch, method, payload, metadata)
                expected = f"the request is not a valid {method.input_type.full_name}: "
                assert (code, details[: len(expected)]) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    expected,
                ), method.full_name
                num_bad += 1
    lines = _wait_for_lines(service, "is not a valid", num_bad)
    assert all(" WARNING " in line for line in lines), lines[:3]
    assert "Traceback" not in service.log_path.read_text()
    assert num_bad >= 2 * len(SERVICES[name].methods)


def _wait_for_lines(service: Service, text: str, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in service.log_path.read_text().splitlines() if text in line]
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) == count, f"{len(lines)} log lines with {text!r}, {count} calls"
            return lines
        time.sleep(0.1)


# ------------------------------------------------------------------------- API key and TLS


def test_the_api_key_is_required_on_every_rpc_but_health(mesh: Mesh) -> None:
    with mesh.gateway_channel() as ch:
        request = _chat("Hi")
        assert _stream(ch, request, bearer_metadata(KEY))[-1].finish_reason
        for metadata in ((), bearer_metadata("wrong"), (("authorization", KEY),)):
            with pytest.raises(grpc.RpcError) as refused:
                _stream(ch, request, metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <key>" in refused.value.details()
        stub = gateway_pb2_grpc.GatewayStub(ch)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModelInfo(gateway_pb2.GetModelInfoRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        from protos.channels import health_status

        assert health_status(ch) == "SERVING"  # probes need no key


def test_tls_handshake_is_refused_in_plaintext_and_with_another_ca(
    mesh: Mesh, tmp_path: Path
) -> None:
    other = self_signed(tmp_path, "not-the-gateways-ca")
    for ch in (mesh.gateway_channel(tls=False), channel(mesh.gateway.address, other.cert_pem)):
        with ch, pytest.raises(grpc.RpcError) as refused:
            _stream(ch, _chat("Hi"), bearer_metadata(KEY))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_meshserve_chat_speaks_tls_with_the_api_key(
    mesh: Mesh, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["chat", "Hi", "--gateway", mesh.gateway.address, "--max-tokens", "3"]
    assert meshserve([*argv, "--tls-ca", str(mesh.cert.cert), "--api-key", KEY]) == 0
    assert "finish" in capsys.readouterr().err
    monkeypatch.setenv("MESHSERVE_API_KEY", KEY)
    assert meshserve([*argv, "--tls-ca", str(mesh.cert.cert)]) == 0
    monkeypatch.delenv("MESHSERVE_API_KEY")
    assert meshserve([*argv, "--tls-ca", str(mesh.cert.cert)]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


# ------------------------------------------------------------------------------ admission


def test_requests_past_the_lm_queue_bound_are_resource_exhausted(mesh: Mesh) -> None:
    barrier = threading.Barrier(8)

    def one(_: int) -> str:
        with mesh.gateway_channel() as ch:
            barrier.wait()
            try:
                _stream(ch, _chat("Count", max_tokens=300), bearer_metadata(KEY))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert "(--max-queued-requests 2)" in exc.details()
                return "refused"
            return "served"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(8)))
    assert outcomes.count("refused") >= 1 and outcomes.count("served") >= 3, outcomes


def test_an_encode_call_past_the_item_bound_is_resource_exhausted(mesh: Mesh) -> None:
    item = encoder_pb2.EncodeItem(data=_video(0))
    request = encoder_pb2.EncodeRequest(
        modality=common_pb2.MODALITY_VIDEO, items=[item] * (MAX_QUEUED_ITEMS + 1)
    )
    with channel(mesh.video.address) as ch, pytest.raises(grpc.RpcError) as refused:
        encoder_pb2_grpc.EncoderStub(ch).Encode(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"brings {MAX_QUEUED_ITEMS + 1} (--max-queued-items {MAX_QUEUED_ITEMS})" in (
        refused.value.details()
    )


# --------------------------------------------------------------------------------- memory

# Measured on 2 shared cores: ~6 MiB over these 300 videos; ~47 MiB when every caller thread
# decoded (FFmpeg buffers, malloc arenas and OpenMP teams per thread).
RSS_GROWTH_BOUND_MIB = 20


def test_video_encoder_rss_stays_flat_over_300_unique_videos(mesh: Mesh) -> None:
    with channel(mesh.video.address) as ch, ThreadPoolExecutor(32) as pool:
        stub = encoder_pb2_grpc.EncoderStub(ch)

        def encode(seed: int) -> None:
            item = encoder_pb2.EncodeItem(
                data=_video(1000 + seed), options=encoder_pb2.MediaOptions(num_frames=4)
            )
            request = encoder_pb2.EncodeRequest(modality=common_pb2.MODALITY_VIDEO, items=[item])
            assert stub.Encode(request, timeout=120).items[0].num_tokens > 0

        list(pool.map(encode, range(100)))  # warm-up: every thread has met a video
        before = _rss_mib(mesh.video)
        list(pool.map(encode, range(100, 400)))
        growth = _rss_mib(mesh.video) - before
    assert growth < RSS_GROWTH_BOUND_MIB, f"RSS grew {growth:.1f} MiB over 300 unique videos"


def _rss_mib(service: Service) -> float:
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -------------------------------------------------------------------------------- metrics


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value} from a real HTTP scrape, parsed by prometheus."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_every_service_serves_metrics_after_a_request(mesh: Mesh) -> None:
    with mesh.gateway_channel() as ch:
        _stream(ch, _chat("Describe", max_tokens=3, video=_video(7)), bearer_metadata(KEY))
        with pytest.raises(grpc.RpcError):
            _stream(ch, _chat("Hi"))  # no key: a refusal, counted by code
    gateway, lm, video = (_scrape(mesh.metrics_ports[n]) for n in ("gateway", "lm", "video"))

    assert gateway["meshserve:request_success_total"][(("finished_reason", "length"),)] >= 1
    assert gateway["meshserve:time_to_first_token_seconds_count"][()] >= 1
    refused = gateway["meshserve:refused_requests_total"]
    chat = "/meshserve.v1.Gateway/Chat"
    assert refused[(("code", "UNAUTHENTICATED"), ("method", chat))] >= 1

    for metric in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f"meshserve:{metric}" in lm, metric
    assert lm["meshserve:prefix_cache_queries_total"][()] > 0
    assert "meshserve:prefix_cache_hits_total" in lm and "meshserve:num_preemptions_total" in lm
    assert lm["meshserve:e2e_request_latency_seconds_count"][()] >= 1
    assert lm["meshserve:inter_token_latency_seconds_count"][()] >= 1
    assert lm["meshserve:request_success_total"][(("finished_reason", "length"),)] >= 1

    by_modality = (("modality", "video"),)
    assert video["meshserve:mm_cache_queries_total"][by_modality] >= 1
    assert "meshserve:mm_cache_hits_total" in video
    assert video["meshserve:encoder_batch_size_count"][by_modality] >= 1
    assert video["meshserve:encoder_batch_latency_seconds_count"][by_modality] >= 1
    assert video["meshserve:encoder_request_latency_seconds_count"][by_modality] >= 1
