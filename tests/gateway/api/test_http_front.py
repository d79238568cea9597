"""The HTTP front over a scripted LM: the API key, OpenAI error objects and their statuses,
bodies that do not parse, refused fields, and a dropped stream closing the LM stream. Fast: no
model runs (the llama tokenizer and chat template only)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from gateway.api.http.app import build_app
from gateway.api.http.errors import api_error, field_path
from gateway.api.http.options import HttpOptions
from gateway.app import serve
from gateway.backends.base import LMRequest
from protos import errors
from protos.auth import check_bearer
from protos.channels import channel
from protos.lm_messages import StepOutput
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from protos.ports import free_port
from tests.gateway.api.http_gateway import RunningGateway, serve_in_thread
from tests.gateway.pipeline.test_orchestrator import FakeLM, _orchestrator

KEY = "sesame"
SCRIPT = list(range(40, 48))


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    lm = FakeLM(SCRIPT, delay=0.02)
    options = HttpOptions(api_key=KEY, served_model_name="tiny-llama")
    running = serve_in_thread(_orchestrator(lm), options)
    yield running
    running.close()


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    """The app alone (no sockets, no key), its health probe saying NOT_SERVING."""

    async def not_serving() -> bool:
        return False

    app = build_app(_orchestrator(FakeLM(SCRIPT)), HttpOptions(), not_serving)
    with TestClient(app) as client:
        yield client


def _chat(**extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **extra}


# ----------------------------------------------------------------------------- the API key


def test_the_api_key_guards_every_v1_route_but_not_health(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        gateway.client(api_key="wrong").models.list()
    assert info.value.status_code == 401 and "Incorrect API key" in info.value.message
    bare = httpx.post(f"{gateway.http_url}/v1/chat/completions", json=_chat())
    assert bare.status_code == 401
    assert bare.json()["error"] == {
        "message": "This gateway needs an API key: send the header 'Authorization: Bearer <key>'",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert httpx.get(f"{gateway.http_url}/health").status_code == 200
    reply = gateway.client(api_key=KEY).chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hello"}]
    )
    tokenizer = gateway.orchestrator.prompts.tokenizer
    assert reply.choices[0].message.content == tokenizer.decode(SCRIPT)
    assert reply.usage.completion_tokens == len(SCRIPT) and reply.model == "tiny-llama"


def test_the_http_key_rule_reads_only_bearer_headers() -> None:
    # The HTTP front applies protos.auth's rule, the gRPC interceptor's.
    assert check_bearer("Bearer abc", "abc") and check_bearer("bearer  abc ", "abc")
    assert not check_bearer("Basic abc", "abc") and not check_bearer(None, "abc")
    assert not check_bearer("Bearer ", "abc")


# ----------------------------------------------------------------------------- models, health


def test_models_list_the_served_name_and_unknown_models_are_404(gateway: RunningGateway) -> None:
    client = gateway.client(api_key=KEY)
    (card,) = client.models.list().data
    assert card.id == "tiny-llama" and card.owned_by == "meshserve"
    assert client.models.retrieve(gateway.model).id == "tiny-llama"  # the path names it too
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"
    assert "'gpt-4o' does not exist; this gateway serves 'tiny-llama'" in info.value.message


def test_health_is_503_unless_grpc_health_is_serving(
    app_client: TestClient, gateway: RunningGateway
) -> None:
    response = app_client.get("/health")
    assert response.status_code == 503
    assert "not serving" in response.json()["error"]["message"]
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with channel(gateway.grpc_address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"{gateway.http_url}/health").status_code == 200


# ----------------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b'{"messages": [', "The request body is not valid JSON (at character 14)", None),
        (b"[1, 2]", "The request body must be a JSON object", None),
        (b'{"messages": "hi"}', "messages: Input should be a valid list", "messages"),
        (
            b'{"messages": [{"role": "user", "content": 5}]}',
            "messages[0].content: Input should be a valid string",
            "messages[0].content",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}',
            "max_tokens: Input should be a valid integer",
            "max_tokens",
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "image_url", '
            b'"image_url": {"url": 7}}]}]}',
            "messages[0].content[0].image_url.url: Input should be a valid string",
            "messages[0].content[0].image_url.url",
        ),
    ],
)
def test_a_body_that_does_not_parse_is_a_400_naming_the_field(
    app_client: TestClient, body: bytes, message: str, param: str | None
) -> None:
    response = app_client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith(message) and error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_json_without_its_content_type_says_so(app_client: TestClient) -> None:
    response = app_client.post("/v1/completions", content=b'{"prompt": "x"}')
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["error"]["message"]


def test_unknown_routes_and_methods_are_openai_errors(app_client: TestClient) -> None:
    missing = app_client.post("/v1/responses", json={})
    assert missing.status_code == 404 and "POST /v1/responses" in missing.json()["error"]["message"]
    assert app_client.get("/v1/chat/completions").status_code == 405


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool calling is not"),
        ({"response_format": {"type": "json_object"}}, "structured output"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias is not supported"),
        ({"chat_template": "{{ x }}"}, "chat_template is not accepted"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
        ({"stream_options": {"include_usage": True}}, "only allowed when stream is true"),
        ({"n": 0}, "n must be between 1 and 128"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "'robot' is not a role"),
        (
            {"continue_final_message": True, "add_generation_prompt": True},
            "cannot both be true",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "file"}]}]}, "unknown content"),
    ],
)
def test_fields_we_cannot_honour_are_refused(
    app_client: TestClient, extra: dict, message: str
) -> None:
    response = app_client.post("/v1/chat/completions", json=_chat(**extra))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png,raw", "a data: URL must be data:<mime type>;base64,<data>"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("file:///etc/passwd", "URL scheme 'file' is not supported"),
        (
            "https://example.com/cat.png",
            "media URLs from 'example.com' are not allowed; send the file as a data: URL, or "
            "start the gateway with --allowed-media-domains example.com",
        ),
    ],
)
def test_media_urls_are_data_urls_or_from_allowed_hosts(
    app_client: TestClient, url: str, message: str
) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    content = [part, {"type": "text", "text": "What?"}]
    response = app_client.post(
        "/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": content}])
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"messages[0].content[0]: {message}")


def test_other_tasks_endpoints_say_what_this_gateway_serves(app_client: TestClient) -> None:
    embed = app_client.post("/v1/embeddings", json={"input": "x"})
    assert embed.status_code == 400
    assert "for the 'generate' task; 'embed' is not available" in embed.json()["error"]["message"]
    files = {"file": ("a.wav", b"RIFF....", "audio/wav")}
    transcribe = app_client.post("/v1/audio/transcriptions", files=files)
    assert transcribe.status_code == 400
    assert "'transcription' is not available" in transcribe.json()["error"]["message"]
    score = app_client.post("/score", json={"text_1": "a", "text_2": "b"})
    assert score.status_code == 400 and "'score' is not available" in score.text


def test_a_broken_modality_rule_reads_the_same_over_http_and_grpc(
    gateway: RunningGateway,
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    client = gateway.client(api_key=KEY)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "x"}]}],
        )
    request = gateway_pb2.ChatRequest(
        messages=[
            gateway_pb2.ChatMessage(
                role="user",
                content=[
                    gateway_pb2.ContentPart(
                        media=gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=b"\0")
                    ),
                    gateway_pb2.ContentPart(text="x"),
                ],
            )
        ]
    )
    with channel(gateway.grpc_address) as ch, pytest.raises(grpc.RpcError) as refused:
        list(gateway_pb2_grpc.GatewayStub(ch).Chat(request))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.body["message"] == refused.value.details()
    assert "image is not supported" in refused.value.details()


# ----------------------------------------------------------------------------- streams


def test_a_dropped_stream_closes_the_lm_stream(gateway: RunningGateway) -> None:
    lm = gateway.orchestrator.lm
    before = len(lm.closed_early)
    stream = gateway.client(api_key=KEY).chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    next(iter(stream))  # the role chunk: the LM stream is open
    stream.close()
    deadline = time.monotonic() + 5
    while len(lm.closed_early) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(lm.closed_early) == before + 1


def test_a_client_that_gives_up_on_a_whole_answer_closes_the_lm_stream() -> None:
    lm = FakeLM(list(range(40, 240)), delay=0.05)  # 10 s of tokens
    running = serve_in_thread(_orchestrator(lm))
    try:
        body = {"prompt": "Hello", "max_tokens": 200}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{running.http_url}/v1/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 5
        while not lm.closed_early and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lm.closed_early == lm.request_ids and len(lm.request_ids) == 1
    finally:
        running.close()


class FailingLM(FakeLM):
    """Streams two tokens, then loses its backend."""

    async def generate(
        self, request: LMRequest, timeout: float | None = None
    ) -> AsyncIterator[StepOutput]:
        sent = 0
        async for out in super().generate(request, timeout):
            yield out
            sent += 1
            if sent == 2:
                raise errors.Unavailable("the LM service went away")


def test_an_error_after_the_stream_began_is_an_error_event() -> None:
    running = serve_in_thread(_orchestrator(FailingLM(SCRIPT)))
    try:
        stream = running.client().chat.completions.create(
            model=running.model, messages=[{"role": "user", "content": "Hello"}], stream=True
        )
        with pytest.raises(openai.APIError, match="the LM service went away"):
            for _ in stream:
                pass
    finally:
        running.close()


def test_a_taken_http_port_stops_the_gateway_with_a_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        work = serve(
            _orchestrator(FakeLM(SCRIPT)), "127.0.0.1", free_port(), http=HttpOptions(port)
        )
        with pytest.raises(OSError, match=f"cannot bind the HTTP port 127.0.0.1:{port}"):
            asyncio.run(work)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidRequest("x"), 400),
        (errors.LimitExceeded("x"), 400),
        (errors.UnknownMedia("x"), 404),
        (errors.Overloaded("queue is full"), 429),
        (errors.Overloaded("prompt of 2000 tokens is longer than max_model_len=1024"), 400),
        (errors.Unsupported("x"), 400),
        (errors.Unavailable("x"), 503),
        (TimeoutError("x"), 504),
        (RuntimeError("x"), 500),
    ],
)
def test_each_kind_of_refusal_gets_the_status_of_its_grpc_code(exc: Exception, status: int) -> None:
    error = api_error(exc)
    assert error.status == status
    assert error.body()["error"]["message"].endswith(str(exc))


def test_a_backends_grpc_status_maps_the_same_way() -> None:
    class Refused(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return "prompt of 900 tokens needs 300 KV blocks of 4 tokens; the cache has 256"

    error = api_error(Refused())
    assert (error.status, error.code) == (400, "context_length_exceeded")


def test_field_paths_drop_pydantic_union_labels() -> None:
    loc = ("body", "messages", 0, "content", "list[ContentPart]", 1, "image_url", "url")
    assert field_path(loc) == "messages[0].content[1].image_url.url"
    assert field_path(("body", "stop", "str")) == "stop"


def test_metrics_are_served_beside_health_without_the_key(gateway: RunningGateway) -> None:
    # GET /metrics: the gateway's Prometheus registry (the one --metrics-port serves), open to
    # scrapers like /health, and it counts the requests served through HTTP too.
    from prometheus_client.parser import text_string_to_metric_families

    gateway.client(api_key=KEY).chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    response = httpx.get(f"{gateway.http_url}/metrics")
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert "meshserve:request_success" in names
