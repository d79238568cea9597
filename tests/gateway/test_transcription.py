"""Transcription (`--task transcription`): a tiny random Whisper, offline and over gRPC."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration

from gateway import LLM
from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.errors import InvalidRequest, Unsupported
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from protos.sampling_params import SamplingParams
from tests.services import start

RATE = 16000
GREEDY_8 = SamplingParams(temperature=0, max_tokens=8)


def _tone_int16(seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(samples.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def whisper() -> str:
    return str(tiny_model_path("whisper"))


@pytest.fixture(scope="module")
def llm(whisper: str) -> Iterator[LLM]:
    llm = LLM(whisper, task="transcription")
    yield llm
    llm.close()


@pytest.mark.seed_row("Whisper", "transcription")
def test_tokens_equal_hf_generate(whisper: str, llm: LLM) -> None:
    samples = _tone_int16()
    processor = AutoProcessor.from_pretrained(whisper)
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    features = processor.feature_extractor(
        samples.astype(np.float32) / 32768, sampling_rate=RATE, return_tensors="pt"
    ).input_features
    with torch.inference_mode():
        expected = model.generate(
            features, language="en", task="transcribe", max_new_tokens=8, do_sample=False
        )[0].tolist()

    output = llm.transcribe(_wav_bytes(samples), language="en", sampling_params=GREEDY_8)

    completion = output.outputs[0]
    assert list(completion.token_ids) == expected
    assert completion.text == processor.tokenizer.decode(expected, skip_special_tokens=True)
    assert completion.finish_reason == "length"  # 8 tokens, no EOS from a random model
    waveform = (samples.astype(np.float32) / 32768, RATE)  # the decoded form gives the same
    assert llm.transcribe(waveform, "<|en|>", sampling_params=GREEDY_8).outputs[0] == completion


def test_refusals_name_the_mistake(llm: LLM) -> None:
    audio = _wav_bytes(_tone_int16(0.2))
    with pytest.raises(InvalidRequest, match="language 'klingon'.*en"):
        llm.transcribe(audio, language="klingon")
    with pytest.raises(InvalidRequest, match="'transcribe' or 'translate', got 'sing'"):
        llm.transcribe(audio, language="en", task="sing")
    with pytest.raises(InvalidRequest, match="^audio 0: "):
        llm.transcribe(b"RIFF not really a wav", language="en")
    with pytest.raises(Unsupported, match="logprobs"):
        llm.transcribe(audio, language="en", sampling_params=SamplingParams(logprobs=1))
    with pytest.raises(Unsupported, match="cannot generate"):
        llm.generate("hello")


def test_grpc_transcribe_equals_offline(whisper: str, llm: LLM) -> None:
    audio = _wav_bytes(_tone_int16())
    offline = llm.transcribe(audio, language="en", sampling_params=GREEDY_8).outputs[0]
    gateway = start("gateway", ["--task", "transcription", "--model", whisper])
    try:
        with channel(gateway.address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            sampling = common_pb2.SamplingParams(temperature=0, max_tokens=8)
            request = gateway_pb2.TranscribeRequest(
                request_id="t1", audio=audio, language="en", sampling=sampling
            )
            (reply,) = list(stub.Transcribe(request, timeout=30))
            assert list(reply.token_ids) == list(offline.token_ids)
            assert reply.text == offline.text
            assert reply.finish_reason == common_pb2.FINISH_REASON_LENGTH
            assert reply.usage.completion_tokens == 8 and reply.timings.total_ms > 0

            bad = gateway_pb2.TranscribeRequest(request_id="t2", audio=b"junk", language="en")
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Transcribe(bad, timeout=30))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "audio 0:" in refused.value.details()

            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Generate(gateway_pb2.GenerateRequest(prompt="hi"), timeout=30))
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "'transcription' task" in refused.value.details()
    finally:
        gateway.stop()
