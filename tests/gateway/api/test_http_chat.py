"""Chat and completions over HTTP with the official openai client, on a tiny Qwen2-VL (images
and videos) served in process: greedy output equals the gRPC Chat's, streaming, usage, n,
logprobs, stops, precomputed embeddings, every refusal, and dropped clients freeing KV blocks."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import torch

from gateway.api.http.options import HttpOptions
from gateway.pipeline.types import MediaInput
from protos.channels import channel
from protos.meshserve.v1 import common_pb2, encoder_pb2, gateway_pb2, gateway_pb2_grpc
from tests import mm_reference as ref
from tests.gateway.api.http_gateway import RunningGateway, data_url, mp4, png, start_gateway

MAX_TOKENS = 8
GREEDY: dict[str, Any] = {
    "temperature": 0,
    "max_tokens": MAX_TOKENS,
    "extra_body": {"ignore_eos": True},
}
PICTURE = png(ref.image((200, 120, 40), 56))
CLIP = mp4(ref.video_frames(4, 56))


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    options = HttpOptions(allowed_media_domains=("127.0.0.1",))
    running = start_gateway("qwen2_vl", limits="image=2,video=1", http=options)
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> openai.OpenAI:
    return gateway.client()


def _image_part(data: bytes = PICTURE) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url("image/png", data)}}


def _video_part() -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": data_url("video/mp4", CLIP), "num_frames": 4}}


def _user(*parts: dict[str, Any], text: str = "What is here?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _chat(client: openai.OpenAI, gateway: RunningGateway, messages: list, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=gateway.model, messages=messages, **{**GREEDY, **kwargs}
    )


# ----------------------------------------------------------------------------- answers


def test_chat_with_an_image_and_a_video_equals_the_grpc_chat(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    reply = _chat(client, gateway, _user(_image_part(), _video_part()))
    (choice,) = reply.choices
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert reply.usage.completion_tokens == MAX_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + MAX_TOKENS
    video = gateway_pb2.MediaPart(
        modality=common_pb2.MODALITY_VIDEO,
        data=CLIP,
        options=encoder_pb2.MediaOptions(num_frames=4),
    )
    image = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=PICTURE)
    message = gateway_pb2.ChatMessage(
        role="user",
        content=[
            gateway_pb2.ContentPart(media=image),
            gateway_pb2.ContentPart(media=video),
            gateway_pb2.ContentPart(text="What is here?"),
        ],
    )
    sampling = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    with channel(gateway.grpc_address) as ch:
        replies = list(
            gateway_pb2_grpc.GatewayStub(ch).Chat(
                gateway_pb2.ChatRequest(messages=[message], sampling=sampling)
            )
        )
    assert choice.message.content == "".join(r.text for r in replies)
    assert reply.usage.prompt_tokens == replies[-1].usage.prompt_tokens


def test_a_streamed_chat_says_the_same_and_ends_with_usage(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    messages = _user(_image_part(png(ref.image((20, 200, 90), 56))), text="Describe it.")
    whole = _chat(client, gateway, messages)
    chunks = list(
        _chat(client, gateway, messages, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == MAX_TOKENS
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.prompt_tokens_details.cached_tokens > 0  # the same prompt, again


def test_n_choices_logprobs_and_usage_counting_the_prompt_once(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    messages = [{"role": "user", "content": "Count to three."}]
    one = _chat(client, gateway, messages)
    two = _chat(client, gateway, messages, n=2, logprobs=True, top_logprobs=3)
    assert [c.index for c in two.choices] == [0, 1]
    assert {c.message.content for c in two.choices} == {one.choices[0].message.content}
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * MAX_TOKENS
    content = two.choices[0].logprobs.content
    assert len(content) == MAX_TOKENS
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.logprob
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
    assert one.choices[0].logprobs is None


def test_stop_strings_seeds_and_vllm_extras(gateway: RunningGateway, client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say something long."}]
    text = _chat(client, gateway, messages, max_tokens=16).choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stopped = _chat(client, gateway, messages, max_tokens=16, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.message.content == text[: text.index(stop)]
    sampled = {
        _chat(client, gateway, messages, temperature=1.0, seed=7, top_p=0.9)
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(sampled) == 1  # a seed makes sampling reproducible
    other = _chat(client, gateway, messages, temperature=1.0, seed=8, top_p=0.9)
    assert other.choices[0].message.content not in sampled
    extras = {"ignore_eos": True, "top_k": 1, "min_p": 0.1, "repetition_penalty": 1.0}
    greedy_by_top_k = _chat(
        client, gateway, messages, max_tokens=16, temperature=1.0, extra_body=extras
    )
    assert greedy_by_top_k.choices[0].message.content == text


def test_chat_template_options(gateway: RunningGateway, client: openai.OpenAI) -> None:
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello the"}]
    prompts = gateway.orchestrator.prompts
    for extra, add_generation_prompt in (
        ({"continue_final_message": True, "add_generation_prompt": False}, False),
        ({"add_generation_prompt": True, "chat_template_kwargs": {"enable_thinking": False}}, True),
    ):
        kwargs = {"continue_final_message": True} if not add_generation_prompt else {}
        rendered = prompts.render_chat(turns, add_generation_prompt, **kwargs)
        reply = _chat(client, gateway, turns, extra_body={**GREEDY["extra_body"], **extra})
        assert reply.usage.prompt_tokens == len(prompts.text_only(rendered))
    assert rendered.endswith("<|im_start|>assistant\n")
    short = _chat(client, gateway, turns[:1], max_completion_tokens=3)  # wins over max_tokens
    assert short.usage.completion_tokens == 3


def test_precomputed_image_embeddings_answer_like_the_image(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    encode = gateway.orchestrator.encode([MediaInput("image", data=PICTURE)], None)
    (result,) = asyncio.run_coroutine_threadsafe(encode, gateway.loop).result(60)
    buffer = io.BytesIO()
    torch.save(result.embeddings, buffer)
    embeds = {
        "type": "image_embeds",
        "image_embeds": {
            "image_embeds": base64.b64encode(buffer.getvalue()).decode(),
            "image_grid_thw": list(result.metadata["grid_thw"]),
        },
    }
    by_image = _chat(client, gateway, _user(_image_part()))
    by_embeds = _chat(client, gateway, _user(embeds))
    assert by_embeds.choices[0].message.content == by_image.choices[0].message.content


class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "http://example.com/cat.png")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(PICTURE)

    def log_message(self, *args: Any) -> None:
        pass


def test_media_urls_of_allowed_hosts_are_fetched_without_redirects(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{files.server_address[1]}"
    try:
        fetched = _chat(
            client, gateway, _user({"type": "image_url", "image_url": {"url": f"{base}/cat.png"}})
        )
        moved = _refused(
            lambda: _chat(
                client,
                gateway,
                _user({"type": "image_url", "image_url": {"url": f"{base}/moved.png"}}),
            )
        )
    finally:
        files.shutdown()
    by_data = _chat(client, gateway, _user(_image_part()))
    assert fetched.choices[0].message.content == by_data.choices[0].message.content
    assert moved.status_code == 400 and "cannot fetch" in moved.message and "302" in moved.message


def test_completions_take_text_or_token_ids_streamed_or_not(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    tokenizer = gateway.orchestrator.prompts.tokenizer
    ids = tokenizer.encode("Once upon a time", add_special_tokens=False)
    args: dict[str, Any] = {"model": gateway.model, **GREEDY}
    by_text = client.completions.create(prompt="Once upon a time", **args)
    by_ids = client.completions.create(prompt=ids, **args)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.usage.prompt_tokens == len(ids) and by_text.object == "text_completion"
    streamed = list(
        client.completions.create(
            prompt=["Once upon a time", "Hello"],
            stream=True,
            stream_options={"include_usage": True},
            **args,
        )
    )
    texts = ["", ""]
    for chunk in streamed[:-1]:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts[0] == by_text.choices[0].text
    assert streamed[-1].usage.completion_tokens == 2 * MAX_TOKENS
    echoed = client.completions.create(prompt="Once upon a time", echo=True, **args)
    assert echoed.choices[0].text == "Once upon a time" + by_text.choices[0].text
    scored = client.completions.create(prompt="Once upon a time", logprobs=2, **args)
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == MAX_TOKENS and "".join(logprobs.tokens) == scored.choices[0].text
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


# ----------------------------------------------------------------------------- refusals


def _refused(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def test_refusals_give_their_status_and_sentence(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    wav = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"},
    }
    cases = {
        "Qwen2VLForConditionalGeneration accepts T + IE+ + VE+: audio is not supported": _user(wav),
        "At most 2 image(s) may be provided in one prompt": _user(*[_image_part()] * 3),
        "image 0": _user(_image_part(b"not a png")),
    }
    for needle, messages in cases.items():
        error = _refused(lambda m=messages: _chat(client, gateway, m))
        assert error.status_code == 400 and needle in error.message, error.message
    wrong = io.BytesIO()
    torch.save(torch.zeros(4, 7), wrong)
    embeds = {
        "type": "image_embeds",
        "image_embeds": {
            "image_embeds": base64.b64encode(wrong.getvalue()).decode(),
            "image_grid_thw": [1, 4, 4],
        },
    }
    error = _refused(lambda: _chat(client, gateway, _user(embeds)))
    assert error.status_code == 400 and "hidden" in error.message
    too_long = _refused(
        lambda: client.completions.create(model=gateway.model, prompt=[5] * 1100, max_tokens=2)
    )
    assert too_long.status_code == 400 and too_long.body["code"] == "context_length_exceeded"
    assert "longer than max_model_len=1024" in too_long.message


# ----------------------------------------------------------------------------- disconnects


def _wait_idle(gateway: RunningGateway, free: int, timeout: float = 10.0) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    load = gateway.lm_load()
    while load != (0, 0, free) and time.monotonic() < deadline:
        time.sleep(0.05)
        load = gateway.lm_load()
    return load


def test_a_dropped_stream_aborts_the_request_and_frees_its_blocks(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    idle = gateway.lm_load()
    assert idle[:2] == (0, 0)
    stream = _chat(client, gateway, _user(_image_part()), max_tokens=400, stream=True)
    chunks = iter(stream)
    next(chunks), next(chunks)
    assert gateway.lm_load()[2] < idle[2]  # the request holds blocks
    stream.close()
    assert _wait_idle(gateway, idle[2]) == (0, 0, idle[2])


def test_a_client_that_gives_up_on_a_whole_answer_frees_its_blocks(
    gateway: RunningGateway,
) -> None:
    idle = gateway.lm_load()
    # NOTE: the answer must outlast the client's patience: with one torch thread the tiny model
    # streamed 600 tokens in under 1 s, so ask for nearly max_model_len (1024) and wait 0.2 s.
    body = {
        "model": gateway.model,
        "prompt": "Go on and on",
        "max_tokens": 1000,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.http_url}/v1/completions", json=body, timeout=0.2)
    assert _wait_idle(gateway, idle[2]) == (0, 0, idle[2])
