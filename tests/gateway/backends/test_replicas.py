"""Remote backends over real gRPC servers: round robin skips NOT_SERVING replicas, and an
encode that fails with UNAVAILABLE is retried once on another replica."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest
import torch

from gateway.backends.remote import RemoteEncoderBackend
from protos.encoder_messages import MediaItem
from protos.errors import Unavailable
from protos.meshserve.v1 import encoder_pb2, encoder_pb2_grpc
from protos.server import Server, ServerConfig
from protos.tensor_codec import tensor_to_proto

T = TypeVar("T")


class FakeEncoder(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, name: str, fail_with: grpc.StatusCode | None = None) -> None:
        self.name = name
        self.fail_with = fail_with
        self.calls = 0

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        self.calls += 1
        if self.fail_with is not None:
            await context.abort(self.fail_with, f"{self.name} is failing")
        item = encoder_pb2.EncodedItem(
            content_hash=self.name, embeddings=tensor_to_proto(torch.zeros(2, 4)), num_tokens=2
        )
        return encoder_pb2.EncodeResponse(items=[item] * len(request.items))


class Replica:
    """A fake service on a `protos.server.Server`, in an event loop of its own thread (a fake
    encoder unless `register` adds another servicer)."""

    def __init__(self, fake: Any, register: Callable[[Any, grpc.aio.Server], None] = None) -> None:
        self.fake = fake
        register = register or encoder_pb2_grpc.add_EncoderServicer_to_server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Server(
            "fake", ["meshserve.v1.Fake"], lambda server: register(fake, server), ServerConfig()
        )
        self.address = f"127.0.0.1:{self._call(self.server.start())}"
        self.set_serving(True)

    def set_serving(self, serving: bool) -> None:
        self._call(self.server.set_serving(serving))

    def freeze(self, seconds: float) -> None:
        """Blocks the server's event loop, as SIGSTOP would: nothing it serves answers."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)


@pytest.fixture
def replicas() -> Iterator[list[tuple[str, FakeEncoder, Replica]]]:
    started = [Replica(FakeEncoder(name)) for name in ("a", "b")]
    yield [(replica.address, replica.fake, replica) for replica in started]
    for replica in started:
        replica.close()


def _encode_n(backend: RemoteEncoderBackend, n: int) -> list[str]:
    async def run() -> list[str]:
        backend.start()
        await asyncio.sleep(0.3)  # one round of health checks
        hashes = []
        for _ in range(n):
            (result,) = await backend.encode("image", [MediaItem(data=b"x")], timeout=5)
            hashes.append(result.content_hash)
        await backend.close()
        return hashes

    return asyncio.run(run())


def test_round_robin_spreads_calls(replicas: list) -> None:
    backend = RemoteEncoderBackend({"image": [addr for addr, _, _ in replicas]})
    assert sorted(_encode_n(backend, 6)) == ["a"] * 3 + ["b"] * 3


def test_not_serving_replica_is_skipped(replicas: list) -> None:
    replicas[0][2].set_serving(False)
    backend = RemoteEncoderBackend({"image": [addr for addr, _, _ in replicas]})
    assert _encode_n(backend, 4) == ["b"] * 4
    assert replicas[0][1].calls == 0


def test_unavailable_is_retried_once_on_another_replica(replicas: list) -> None:
    replicas[0][1].fail_with = grpc.StatusCode.UNAVAILABLE
    backend = RemoteEncoderBackend({"image": [addr for addr, _, _ in replicas]})
    assert _encode_n(backend, 4) == ["b"] * 4
    assert replicas[0][1].calls >= 1


def test_other_errors_are_not_retried(replicas: list) -> None:
    for _, fake, _ in replicas:
        fake.fail_with = grpc.StatusCode.INVALID_ARGUMENT
    backend = RemoteEncoderBackend({"image": [addr for addr, _, _ in replicas]})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _encode_n(backend, 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert replicas[0][1].calls + replicas[1][1].calls == 1


def test_cli_reports_user_mistakes_without_a_traceback() -> None:
    from gateway.tools.tiny_models import tiny_model_path

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.tools.cli",
            "gateway",
            "--model",
            str(tiny_model_path("llava")),
            "--lm",
            "127.0.0.1:1",
            "--limit-mm-per-prompt",
            "video=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "it takes no video" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------- health tells who is down


def _backend(replicas: list, **health: float) -> RemoteEncoderBackend:
    backend = RemoteEncoderBackend({"image": [addr for addr, _, _ in replicas]})
    for replica_set in backend.sets.values():
        replica_set.health_interval = health.get("interval", 0.1)
        replica_set.health_timeout = health.get("timeout", 0.5)
    return backend


def test_with_no_healthy_replica_requests_fail_fast_with_a_sentence(replicas: list) -> None:
    for _, _, replica in replicas:
        replica.set_serving(False)
    backend = _backend(replicas)

    async def run() -> tuple[float, str, tuple[str, ...]]:
        backend.start()
        await asyncio.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await backend.encode("image", [MediaItem(data=b"x")], timeout=30)
        down = backend.unavailable_services()
        await backend.close()
        return time.monotonic() - started, str(info.value), down

    elapsed, sentence, down = asyncio.run(run())
    assert elapsed < 0.5  # not the client's deadline
    assert sentence.startswith("no image encoder replica is healthy") and "retry" in sentence
    assert all(f"{addr} is not serving" in sentence for addr, _, _ in replicas)
    assert down == (sentence,)
    assert sum(fake.calls for _, fake, _ in replicas) == 0


def test_a_frozen_replica_is_stalled_and_gets_no_requests(replicas: list) -> None:
    backend = _backend(replicas, timeout=0.3)
    frozen, frozen_fake, frozen_replica = replicas[0]

    async def run() -> tuple[list[str], str]:
        backend.start()
        await asyncio.sleep(0.2)
        frozen_replica.freeze(1.5)
        await asyncio.sleep(0.6)  # one check times out
        (replica_set,) = backend.sets.values()
        state = {r.target: r.health.name for r in replica_set.replicas}[frozen]
        calls_before = frozen_fake.calls
        hashes = []
        for _ in range(4):
            (result,) = await backend.encode("image", [MediaItem(data=b"x")], timeout=5)
            hashes.append(result.content_hash)
        assert frozen_fake.calls == calls_before
        await backend.close()
        return hashes, state

    hashes, state = asyncio.run(run())
    assert state == "STALLED" and hashes == ["b"] * 4


def test_an_encode_on_a_replica_that_froze_mid_call_fails_after_the_stall_timeout(
    replicas: list,
) -> None:
    address, _, replica = replicas[0]
    backend = RemoteEncoderBackend({"image": [address]}, stall_timeout=0.3)

    async def run() -> tuple[float, str]:
        replica.freeze(1.5)  # no health checks started: it still looks healthy
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await backend.encode("image", [MediaItem(data=b"x")], timeout=30)
        await backend.close()
        return time.monotonic() - started, str(info.value)

    elapsed, sentence = asyncio.run(run())
    assert 0.25 < elapsed < 1.2
    assert sentence.startswith(f"the image encoder service at {address} did not answer within 0.3s")
