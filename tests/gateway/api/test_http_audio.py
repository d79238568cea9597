"""Audio over HTTP with the openai client: chat with an audio clip on a tiny Qwen2-Audio, and
/v1/audio/transcriptions and /translations on a tiny Whisper (its decoder on the engine), both
equal to their gRPC calls."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import openai
import pytest

from protos.channels import channel
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests import mm_reference as ref
from tests.gateway.api.http_gateway import RunningGateway, data_url, start_gateway, wav

MAX_TOKENS = 8
CLIP = wav(ref.tone(1.0))
SAMPLING = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def qwen2_audio() -> Iterator[RunningGateway]:
    running = start_gateway("qwen2_audio")
    yield running
    running.close()


@pytest.fixture(scope="module")
def whisper() -> Iterator[RunningGateway]:
    running = start_gateway("whisper", task="transcription")
    yield running
    running.close()


def test_chat_with_an_audio_clip_equals_the_grpc_chat(qwen2_audio: RunningGateway) -> None:
    client = qwen2_audio.client()
    as_input_audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(CLIP).decode(), "format": "wav"},
    }
    as_url = {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", CLIP)}}
    texts, usages = [], []
    for part in (as_input_audio, as_url):
        reply = client.chat.completions.create(
            model=qwen2_audio.model,
            messages=[{"role": "user", "content": [part, {"type": "text", "text": "Who?"}]}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        texts.append(reply.choices[0].message.content)
        usages.append(reply.usage)
    message = gateway_pb2.ChatMessage(
        role="user",
        content=[
            gateway_pb2.ContentPart(
                media=gateway_pb2.MediaPart(modality=common_pb2.MODALITY_AUDIO, data=CLIP)
            ),
            gateway_pb2.ContentPart(text="Who?"),
        ],
    )
    with channel(qwen2_audio.grpc_address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        replies = list(stub.Chat(gateway_pb2.ChatRequest(messages=[message], sampling=SAMPLING)))
    assert texts == ["".join(r.text for r in replies)] * 2
    assert usages[0].completion_tokens == MAX_TOKENS
    assert usages[0].prompt_tokens == replies[-1].usage.prompt_tokens
    assert usages[1].prompt_tokens_details.cached_tokens > 0  # the same clip: prefix cache


def test_an_image_is_refused_by_an_audio_model(qwen2_audio: RunningGateway) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as info:
        qwen2_audio.client().chat.completions.create(
            model=qwen2_audio.model, messages=[{"role": "user", "content": [image]}]
        )
    assert "image is not supported" in info.value.message


def test_transcriptions_and_translations_equal_grpc_transcribe(whisper: RunningGateway) -> None:
    client = whisper.client()
    upload = ("tone.wav", CLIP, "audio/wav")
    extra = {"max_tokens": MAX_TOKENS}
    as_json = client.audio.transcriptions.create(
        model=whisper.model, file=upload, language="en", temperature=0, extra_body=extra
    )
    as_text = client.audio.transcriptions.create(
        model=whisper.model, file=upload, language="en", response_format="text", extra_body=extra
    )
    translated = client.audio.translations.create(
        model=whisper.model, file=upload, extra_body=extra
    )
    sampling = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
    request = gateway_pb2.TranscribeRequest(audio=CLIP, language="en", sampling=sampling)
    translate = gateway_pb2.TranscribeRequest(audio=CLIP, task="translate", sampling=sampling)
    with channel(whisper.grpc_address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        replies = list(stub.Transcribe(request))  # streamed as decoded: one reply a token
        translation = list(stub.Transcribe(translate))
    expected = "".join(r.text for r in replies)
    assert len(replies) == MAX_TOKENS and replies[-1].usage.completion_tokens == MAX_TOKENS
    assert as_json.text == expected and as_text == expected
    assert as_json.usage.output_tokens == MAX_TOKENS
    assert translated.text == "".join(r.text for r in translation)


def test_a_streamed_transcription_arrives_piece_by_piece(whisper: RunningGateway) -> None:
    client = whisper.client()
    upload = ("tone.wav", CLIP, "audio/wav")
    extra = {"max_tokens": MAX_TOKENS}
    whole = client.audio.transcriptions.create(
        model=whisper.model, file=upload, language="en", extra_body=extra
    )
    events = list(
        client.audio.transcriptions.create(
            model=whisper.model, file=upload, language="en", stream=True, extra_body=extra
        )
    )
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) == MAX_TOKENS and events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == events[-1].text == whole.text
    assert events[-1].usage.output_tokens == MAX_TOKENS
    with pytest.raises(openai.BadRequestError) as info:  # refused before the stream starts
        client.audio.transcriptions.create(
            model=whisper.model, file=upload, language="klingon", stream=True
        )
    assert "language 'klingon'" in info.value.message


def test_transcription_refusals_name_the_mistake(whisper: RunningGateway) -> None:
    client = whisper.client()
    upload = ("tone.wav", CLIP, "audio/wav")
    cases = {
        "language 'klingon'": {"language": "klingon"},
        "response_format 'srt' is not supported; use json or text": {"response_format": "srt"},
        "prompt (text to guide the transcription) is not supported": {"prompt": "Hi"},
    }
    for needle, fields in cases.items():
        with pytest.raises(openai.BadRequestError) as info:
            client.audio.transcriptions.create(model=whisper.model, file=upload, **fields)
        assert needle in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(
            model=whisper.model, file=("a.wav", b"junk", "audio/wav")
        )
    assert "audio" in info.value.message.lower()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=whisper.model, messages=[{"role": "user", "content": "Hi"}]
        )
    assert "'transcription' task; 'generate' is not available" in info.value.message
