"""`meshserve up` on a tiny Whisper: the audio encoder service, the LM service running the decoder
on the engine and the gateway; 8 concurrent Transcribe streams equal HF `generate`, batched."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration

from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, lm_pb2, lm_pb2_grpc
from protos.ports import free_port
from tests.gateway.test_transcription import _wav_bytes
from tests.gateway.tools.test_up import start_up  # noqa: F401 - the fixture

RATE, MAX_TOKENS, NUM_STREAMS = 16000, 10, 8


def _clip(index: int) -> np.ndarray:
    """3 s (two of the tiny model's 2 s windows), a different tone per stream."""
    t = np.arange(3 * RATE) / RATE
    return (0.4 * 32767 * np.sin(2 * np.pi * (150 + 60 * index) * t)).astype(np.int16)


def _hf_tokens(path: str, clips: list[np.ndarray]) -> list[list[int]]:
    """HF generate on each 2 s window of each clip (one batched call: every decoder prompt has
    the same 4 tokens, so no padding), joined per clip in window order."""
    processor = AutoProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    size = processor.feature_extractor.n_samples
    windows = [
        (clip / 32768).astype(np.float32)[start : start + size]
        for clip in clips
        for start in range(0, len(clip), size)
    ]
    features = processor.feature_extractor(
        windows, sampling_rate=RATE, return_tensors="pt"
    ).input_features  # [num_windows, mel, frames]
    with torch.inference_mode():
        out = model.generate(features, language="en", task="transcribe", max_new_tokens=MAX_TOKENS)
    per_clip = len(windows) // len(clips)
    rows = out.tolist()
    return [sum(rows[i * per_clip : (i + 1) * per_clip], []) for i in range(len(clips))]


def _peak_running(lm_address: str, stop: threading.Event, peak: list[int]) -> None:
    with channel(lm_address) as ch:
        stub = lm_pb2_grpc.LanguageModelStub(ch)
        while not stop.is_set():
            load = stub.GetLoad(lm_pb2.GetLoadRequest(), timeout=10)
            peak[0] = max(peak[0], load.num_running)


def _check_refusals(stub: gateway_pb2_grpc.GatewayStub) -> None:
    """Bad audio is the encoder service's sentence, text generation the gateway's."""
    bad = gateway_pb2.TranscribeRequest(request_id="bad", audio=b"junk", language="en")
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Transcribe(bad, timeout=30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audio 0:" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Generate(gateway_pb2.GenerateRequest(prompt="hi"), timeout=30))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "'transcription' task" in refused.value.details()


def test_up_batches_concurrent_transcriptions_in_the_engine(start_up) -> None:  # noqa: F811
    path = str(tiny_model_path("whisper"))
    up = start_up("--model", path, "--task", "transcription", "--port", str(free_port()))
    gateway = up.wait_ready()
    services = up.services()
    assert set(services) == {"lm", "encoder-audio", "gateway"}
    clips = [_clip(i) for i in range(NUM_STREAMS)]
    sampling = common_pb2.SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_peak_running, args=(services["lm"][0], stop, peak))
    watcher.start()
    try:
        with channel(gateway) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)

            def transcribe(index: int) -> list[gateway_pb2.GenerateResponse]:
                request = gateway_pb2.TranscribeRequest(
                    request_id=f"t{index}", audio=_wav_bytes(clips[index]), language="en",
                    sampling=sampling,
                )  # fmt: skip
                return list(stub.Transcribe(request, timeout=120))

            with ThreadPoolExecutor(NUM_STREAMS) as pool:
                replies = list(pool.map(transcribe, range(NUM_STREAMS)))
            _check_refusals(stub)
    finally:
        stop.set()
        watcher.join()
    expected = _hf_tokens(path, clips)
    for index, stream in enumerate(replies):
        tokens = [t for reply in stream for t in reply.token_ids]
        assert tokens == expected[index], f"stream {index}"
        assert len(stream) == 2 * MAX_TOKENS  # one message per token, both windows
        assert stream[-1].usage.completion_tokens == 2 * MAX_TOKENS
    assert peak[0] >= 2, "GetLoad never saw two transcriptions running in one engine"
