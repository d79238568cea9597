"""Gateway + encoder services + LM service as real processes on loopback, real gRPC client."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.meshserve.v1 import (
    common_pb2,
    encoder_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    lm_pb2_grpc,
)
from protos.tensor_codec import tensor_to_proto
from tests import mm_reference as ref
from tests.e2e.test_lm_service import _idle_free_blocks
from tests.parity import check_logprobs_close
from tests.services import start, start_many

MAX_TOKENS = 12
IMAGE, VIDEO, AUDIO = (
    common_pb2.MODALITY_IMAGE,
    common_pb2.MODALITY_VIDEO,
    common_pb2.MODALITY_AUDIO,
)


class Stack:
    def __init__(self, name: str, modalities: list[str], limits: str = "") -> None:
        self.path = tiny_model_path(name)
        model = ["--model", str(self.path)]
        backends = start_many(
            [("lm", [*model, "--block-size", "4", "--num-blocks", "256"])]
            + [("encoder", [*model, "--modality", m]) for m in modalities]
        )
        self.services = backends
        encoders = [
            f"--encoder={m}={s.address}" for m, s in zip(modalities, backends[1:], strict=True)
        ]
        extra = ["--limit-mm-per-prompt", limits] if limits else []
        try:
            self.gateway = start(
                "gateway", [*model, "--lm", backends[0].address, *encoders, *extra]
            )
        except BaseException:
            self.stop()
            raise
        self.services.append(self.gateway)
        self.channel = channel(self.gateway.address)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.lm_channel = channel(backends[0].address)
        self.lm = lm_pb2_grpc.LanguageModelStub(self.lm_channel)

    def stop(self) -> None:
        for service in self.services[::-1]:
            service.stop()


@pytest.fixture(scope="module")
def qwen2_vl() -> Iterator[Stack]:
    stack = Stack("qwen2_vl", ["image", "video"], "image=2,video=1")
    yield stack
    stack.stop()


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _mp4(frames: object, fps: int = 4) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _sampling(**kwargs: object) -> common_pb2.SamplingParams:
    base = {"max_tokens": MAX_TOKENS, "temperature": 0.0, "logprobs": 5, "ignore_eos": True}
    return common_pb2.SamplingParams(**{**base, **kwargs})


def _collect(
    call: Iterator[gateway_pb2.GenerateResponse],
) -> tuple[list[int], list[set[int]], gateway_pb2.GenerateResponse]:
    tokens, tops, last = [], [], None
    for reply in call:
        tokens.extend(reply.token_ids)
        tops.extend({t.token_id for t in p.top} for p in reply.logprobs)
        last = reply
    return tokens, tops, last


def _media(modality: int, data: bytes) -> gateway_pb2.MediaPart:
    return gateway_pb2.MediaPart(modality=modality, data=data)


def test_qwen2_vl_image_and_video_match_hf(qwen2_vl: Stack) -> None:
    from tests.gateway.test_llm_offline import _qwen2_vl_ids

    picture = ref.image((200, 120, 40), 56)
    frames = ref.video_frames(4, 56)
    text = (
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>Hi"
    )
    request = gateway_pb2.GenerateRequest(
        prompt=text,
        media=[
            _media(IMAGE, _png(picture)),
            gateway_pb2.MediaPart(
                modality=VIDEO,
                data=(frames_raw := _mp4(frames)),
                options=encoder_pb2.MediaOptions(num_frames=4),
            ),
        ],
        sampling=_sampling(),
    )
    tokens, tops, last = _collect(qwen2_vl.stub.Generate(request))
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == MAX_TOKENS and last.timings.total_ms > 0
    # the reference decodes the same MP4 frames (lossy codec) the encoder saw
    from encoder_service.media import MediaLimits, decode_video

    decoded = decode_video(frames_raw, 0, MediaLimits(), num_frames=4)
    inputs = ref.qwen2_vl_inputs(
        qwen2_vl.path,
        _qwen2_vl_ids(qwen2_vl.path, text, [picture], [decoded.frames]),
        [picture],
        [decoded.frames],
    )
    expected, expected_tops = ref.generate(ref.hf_model(qwen2_vl.path), inputs, MAX_TOKENS)
    assert (
        check_logprobs_close(tokens, tops, expected, expected_tops, "qwen2_vl") >= MAX_TOKENS // 2
    )


def test_chat_stream_text_and_cache_hit(qwen2_vl: Stack) -> None:
    picture = _png(ref.image((30, 30, 220), 56))
    message = gateway_pb2.ChatMessage(
        role="user",
        content=[
            gateway_pb2.ContentPart(media=_media(IMAGE, picture)),
            gateway_pb2.ContentPart(text="What?"),
        ],
    )
    request = gateway_pb2.ChatRequest(messages=[message], sampling=_sampling())
    first = list(qwen2_vl.stub.Chat(request))
    second = list(qwen2_vl.stub.Chat(request))
    # the same tokens (how they are split into stream messages depends on timing)
    assert [t for r in first for t in r.token_ids] == [t for r in second for t in r.token_ids]
    assert first[-1].media_cache_hits == [False] and second[-1].media_cache_hits == [True]
    assert "".join(r.text for r in first)
    assert second[-1].usage.cached_prompt_tokens > 0


def test_refusals_name_the_cause_and_spare_others(qwen2_vl: Stack) -> None:
    picture = _png(ref.image((30, 30, 220), 56))
    image_part = "<|vision_start|><|image_pad|><|vision_end|>"
    cases = {
        "audio is not supported": gateway_pb2.GenerateRequest(
            prompt="x", media=[_media(AUDIO, b"RIFF")]
        ),
        "At most 2 image": gateway_pb2.GenerateRequest(
            prompt=image_part * 3, media=[_media(IMAGE, picture)] * 3
        ),
        "hidden": gateway_pb2.GenerateRequest(
            prompt=image_part,
            media=[
                gateway_pb2.MediaPart(
                    modality=IMAGE,
                    embeddings=gateway_pb2.MediaEmbeddings(
                        embeddings=tensor_to_proto(torch.zeros(4, 7)), grid_thw=[1, 4, 4]
                    ),
                )
            ],
        ),
        "image 0": gateway_pb2.GenerateRequest(
            prompt=image_part, media=[_media(IMAGE, b"not a png")]
        ),
    }
    good: list[object] = []
    worker = threading.Thread(
        target=lambda: good.append(
            _collect(
                qwen2_vl.stub.Generate(
                    gateway_pb2.GenerateRequest(prompt="Hello", sampling=_sampling(max_tokens=40))
                )
            )
        ),
    )
    worker.start()
    for needle, request in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            list(qwen2_vl.stub.Generate(request))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert needle in info.value.details()
    worker.join(60)
    assert good and len(good[0][0]) == 40


def test_put_media_handle_and_unknown_handle(qwen2_vl: Stack) -> None:
    picture = _png(ref.image((90, 30, 20), 56))
    put = qwen2_vl.stub.PutMedia(gateway_pb2.PutMediaRequest(media=_media(IMAGE, picture)))
    assert put.handle and put.num_tokens == 4 and list(put.grid_thw) == [1, 4, 4]
    image_part = "<|vision_start|><|image_pad|><|vision_end|>"
    by_bytes = _collect(
        qwen2_vl.stub.Generate(
            gateway_pb2.GenerateRequest(
                prompt=image_part + "Hi", media=[_media(IMAGE, picture)], sampling=_sampling()
            )
        )
    )
    by_handle = _collect(
        qwen2_vl.stub.Generate(
            gateway_pb2.GenerateRequest(
                prompt=image_part + "Hi",
                media=[gateway_pb2.MediaPart(modality=IMAGE, handle=put.handle)],
                sampling=_sampling(),
            )
        )
    )
    assert by_bytes[0] == by_handle[0]
    with pytest.raises(grpc.RpcError) as info:
        list(
            qwen2_vl.stub.Generate(
                gateway_pb2.GenerateRequest(
                    prompt=image_part,
                    media=[gateway_pb2.MediaPart(modality=IMAGE, handle="media-nope")],
                )
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancel_and_deadline_free_the_lm_blocks(qwen2_vl: Stack) -> None:
    idle = _idle_free_blocks(qwen2_vl.lm)
    call = qwen2_vl.stub.Generate(
        gateway_pb2.GenerateRequest(
            prompt="Tell me a long story", sampling=_sampling(max_tokens=400)
        )
    )
    assert next(call).token_ids
    call.cancel()
    assert _idle_free_blocks(qwen2_vl.lm) == idle
    with pytest.raises(grpc.RpcError) as info:
        list(
            qwen2_vl.stub.Generate(
                gateway_pb2.GenerateRequest(
                    prompt="Tell me a long story", sampling=_sampling(max_tokens=400)
                ),
                timeout=0.05,
            )
        )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _idle_free_blocks(qwen2_vl.lm) == idle


def test_model_info(qwen2_vl: Stack) -> None:
    info = qwen2_vl.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest())
    assert info.architecture == "Qwen2VLForConditionalGeneration"
    assert info.modality_spec == "T + IE+ + VE+"
    assert dict(info.limit_mm_per_prompt) == {"image": 2, "video": 1}
    assert list(info.tasks) == ["generate"]


def test_llava_and_qwen2_audio_stacks_match_hf() -> None:
    llava = Stack("llava", ["image"])
    try:
        picture = ref.image((200, 30, 40), 32)
        prompt = "USER: <image>\nWhat is it? ASSISTANT:"
        tokens, tops, _ = _collect(
            llava.stub.Generate(
                gateway_pb2.GenerateRequest(
                    prompt=prompt, media=[_media(IMAGE, _png(picture))], sampling=_sampling()
                )
            )
        )
        expected, expected_tops = ref.generate(
            ref.hf_model(llava.path), ref.llava_inputs(llava.path, prompt, [picture]), MAX_TOKENS
        )
        assert (
            check_logprobs_close(tokens, tops, expected, expected_tops, "llava") >= MAX_TOKENS // 2
        )
        with pytest.raises(grpc.RpcError) as info:  # LLaVA takes images only
            list(
                llava.stub.Generate(
                    gateway_pb2.GenerateRequest(prompt="x", media=[_media(VIDEO, b"\0")])
                )
            )
        assert "video is not supported" in info.value.details()
    finally:
        llava.stop()
    audio = Stack("qwen2_audio", ["audio"])
    try:
        # what the WAV file holds: 16-bit samples
        clip = (np.clip(ref.tone(1.3), -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768
        prompt = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat is it?"
        tokens, tops, _ = _collect(
            audio.stub.Generate(
                gateway_pb2.GenerateRequest(
                    prompt=prompt, media=[_media(AUDIO, _wav(clip))], sampling=_sampling()
                )
            )
        )
        expected, expected_tops = ref.generate(
            ref.hf_model(audio.path), ref.qwen2_audio_inputs(audio.path, prompt, [clip]), MAX_TOKENS
        )
        assert (
            check_logprobs_close(tokens, tops, expected, expected_tops, "qwen2_audio")
            >= MAX_TOKENS // 2
        )
        embeds = gateway_pb2.MediaPart(
            modality=AUDIO,
            embeddings=gateway_pb2.MediaEmbeddings(embeddings=tensor_to_proto(torch.zeros(4, 64))),
        )
        with pytest.raises(grpc.RpcError) as info:  # T + A+: no E for audio
            list(audio.stub.Generate(gateway_pb2.GenerateRequest(prompt=prompt, media=[embeds])))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "precomputed embeddings" in info.value.details()
    finally:
        audio.stop()


def _wav(clip: object) -> bytes:
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(ref.SAMPLING_RATE)
        f.writeframes(
            (np.asarray(clip) * 32768).round().clip(-32768, 32767).astype("<i2").tobytes()
        )
    return buffer.getvalue()
