"""`meshserve gateway --http-port` as a real process in front of real LM and encoder processes:
the openai client against it, the API key from MESHSERVE_API_KEY, greedy output equal to the
gRPC Chat's (remote backends: logprobs arrive as protos), and a dropped stream leaving the LM
service with no running request and every KV block free."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.tools.tiny_models import tiny_model_path
from protos.auth import bearer_metadata
from protos.channels import channel
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, lm_pb2, lm_pb2_grpc
from protos.ports import free_port
from tests import mm_reference as ref
from tests.e2e.test_lm_service import _idle_free_blocks
from tests.gateway.api.http_gateway import data_url, png
from tests.services import Service, start, start_many

KEY = "e2e-key"
MAX_TOKENS = 8
PICTURE = png(ref.image((90, 30, 200), 32))


class HttpStack:
    def __init__(self) -> None:
        model = ["--model", str(tiny_model_path("llava"))]
        self.services: list[Service] = start_many(
            [
                ("lm", [*model, "--block-size", "4", "--num-blocks", "256"]),
                ("encoder", [*model, "--modality", "image"]),
            ]
        )
        lm, encoder = self.services
        self.http_url = f"http://127.0.0.1:{free_port()}"
        argv = [*model, "--lm", lm.address, f"--encoder=image={encoder.address}"]
        argv += ["--http-port", self.http_url.rsplit(":", 1)[1], "--served-model-name", "llava"]
        os.environ["MESHSERVE_API_KEY"] = KEY  # the gateway reads it at start
        try:
            self.services.append(start("gateway", argv))
        except BaseException:
            self.stop()
            raise
        finally:
            del os.environ["MESHSERVE_API_KEY"]
        self.grpc_address = self.services[-1].address
        self.lm_address = lm.address
        self.client = openai.OpenAI(
            base_url=f"{self.http_url}/v1", api_key=KEY, max_retries=0, timeout=120
        )

    def stop(self) -> None:
        for service in self.services[::-1]:
            service.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[HttpStack]:
    running = HttpStack()
    yield running
    running.client.close()
    running.stop()


def _messages() -> list[dict]:
    image = {"type": "image_url", "image_url": {"url": data_url("image/png", PICTURE)}}
    return [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]


def test_health_and_the_api_key_from_the_environment(stack: HttpStack) -> None:
    assert httpx.get(f"{stack.http_url}/health").status_code == 200
    assert httpx.get(f"{stack.http_url}/v1/models").status_code == 401
    assert [m.id for m in stack.client.models.list().data] == ["llava"]


def test_greedy_http_chat_equals_grpc_chat_across_processes(stack: HttpStack) -> None:
    reply = stack.client.chat.completions.create(
        model="llava",
        messages=_messages(),
        max_tokens=MAX_TOKENS,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    part = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=PICTURE)
    message = gateway_pb2.ChatMessage(
        role="user",
        content=[gateway_pb2.ContentPart(media=part), gateway_pb2.ContentPart(text="What is it?")],
    )
    sampling = common_pb2.SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True, logprobs=2
    )
    with channel(stack.grpc_address) as ch:
        replies = list(
            gateway_pb2_grpc.GatewayStub(ch).Chat(
                gateway_pb2.ChatRequest(messages=[message], sampling=sampling),
                metadata=bearer_metadata(KEY),  # one key guards the gRPC and HTTP APIs
            )
        )
    assert reply.choices[0].message.content == "".join(r.text for r in replies)
    expected = [p.sampled.logprob for r in replies for p in r.logprobs]
    got = [entry.logprob for entry in reply.choices[0].logprobs.content]
    assert got == pytest.approx(expected, abs=1e-4)
    assert all(len(entry.top_logprobs) == 2 for entry in reply.choices[0].logprobs.content)


def test_a_dropped_stream_leaves_the_lm_idle_with_every_block_free(stack: HttpStack) -> None:
    with channel(stack.lm_address) as ch:
        lm = lm_pb2_grpc.LanguageModelStub(ch)
        idle = _idle_free_blocks(lm)
        stream = stack.client.chat.completions.create(
            model="llava",
            messages=_messages(),
            max_tokens=900,  # seconds of decoding: only an abort ends it soon
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        next(chunks), next(chunks)  # the role, then the first tokens
        assert lm.GetLoad(lm_pb2.GetLoadRequest()).num_running == 1
        stream.close()
        assert _idle_free_blocks(lm, timeout=2.0) == idle
        load = lm.GetLoad(lm_pb2.GetLoadRequest())
        assert (load.num_running, load.num_waiting) == (0, 0)
