"""Transcription (`--task transcription`) on the engine: a tiny random Whisper offline, its
audio encoder, its decoder batched in the engine, clips longer than one window."""

from __future__ import annotations

import io
import json
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration

from gateway import LLM
from gateway.app import build_orchestrator, served_model
from gateway.pipeline.transcription import Transcriber
from gateway.tools.tiny_models import tiny_model_path
from protos.errors import InvalidRequest, Unsupported
from protos.sampling_params import SamplingParams

RATE = 16000
GREEDY_8 = SamplingParams(temperature=0, max_tokens=8)
GREEDY_6 = SamplingParams(temperature=0, max_tokens=6)


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


@pytest.mark.seed_row("Whisper", "transcription", impl="native")
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


def _hf_windows(whisper: str, samples: np.ndarray, language: str, max_tokens: int) -> list:
    """HF generate on each window of the feature extractor's length, in order."""
    processor = AutoProcessor.from_pretrained(whisper)
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    size = processor.feature_extractor.n_samples
    tokens = []
    for start in range(0, len(samples), size):
        features = processor.feature_extractor(
            samples[start : start + size], sampling_rate=RATE, return_tensors="pt"
        ).input_features
        with torch.inference_mode():
            out = model.generate(
                features, language=language, task="transcribe", max_new_tokens=max_tokens
            )
        tokens.extend(out[0].tolist())
    return tokens


def test_audio_longer_than_a_window_is_transcribed_window_by_window(whisper: str, llm: LLM) -> None:
    samples = _tone_int16(seconds=5.0, hz=300.0)  # the tiny model's windows are 2 s: 3 windows
    expected = _hf_windows(whisper, samples.astype(np.float32) / 32768, "de", 6)
    output = llm.transcribe(_wav_bytes(samples), language="de", sampling_params=GREEDY_6)
    assert list(output.outputs[0].token_ids) == expected and len(expected) == 18


def test_without_a_language_it_is_detected_as_hf_detects_it(whisper: str, llm: LLM) -> None:
    samples = _tone_int16(seconds=1.5, hz=200.0)
    processor = AutoProcessor.from_pretrained(whisper)
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    features = processor.feature_extractor(
        samples.astype(np.float32) / 32768, sampling_rate=RATE, return_tensors="pt"
    ).input_features
    with torch.inference_mode():
        detected = model.detect_language(features)[0].item()
        expected = model.generate(features, task="translate", max_new_tokens=6)[0].tolist()
    output = llm.transcribe(_wav_bytes(samples), task="translate", sampling_params=GREEDY_6)
    assert list(output.outputs[0].token_ids) == expected
    code = processor.tokenizer.convert_ids_to_tokens(detected).strip("<|>")
    assert (
        llm.transcribe(_wav_bytes(samples), code, "translate", GREEDY_6).outputs[0]
        == (output.outputs[0])
    )


def test_refusals_name_the_mistake(llm: LLM) -> None:
    audio = _wav_bytes(_tone_int16(0.2))
    with pytest.raises(InvalidRequest, match="language 'klingon'.*en"):
        llm.transcribe(audio, language="klingon")
    with pytest.raises(InvalidRequest, match="'transcribe' or 'translate', got 'sing'"):
        llm.transcribe(audio, language="en", task="sing")
    with pytest.raises(InvalidRequest, match="^audio 0: "):
        llm.transcribe(b"RIFF not really a wav", language="en")
    with pytest.raises(Unsupported, match="stop strings"):
        llm.transcribe(audio, language="en", sampling_params=SamplingParams(stop=("x",)))
    with pytest.raises(Unsupported, match="cannot generate"):
        llm.generate("hello")


def test_the_engine_runs_the_decoder(llm: LLM) -> None:
    (impl,) = llm.apply_model(lambda model: (type(model).__module__, model.impl_name))
    assert impl == ("lm_service.models.whisper", "native")


def test_a_client_gone_mid_stream_frees_the_engine_at_once(llm: LLM) -> None:
    from gateway.pipeline.transcription import TranscriptionRequest

    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    request = TranscriptionRequest("gone", _wav_bytes(_tone_int16(3.0)), params, "en")

    async def first_chunk_then_leave() -> str:
        chunks = Transcriber.of(llm._orchestrator).transcribe(request)
        first = await anext(chunks)
        await chunks.aclose()
        return first.text

    llm._run(first_chunk_then_leave())
    engine = llm._lm.loop.engine
    pool = llm._lm.loop.call(lambda e: (e.scheduler.num_running, e.scheduler.encoder_pool.num_free))
    assert pool == (0, engine.scheduler.encoder_pool.num_blocks)


def _hf_generate(path: str, samples: np.ndarray, max_tokens: int) -> list[int]:
    processor = AutoProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    features = processor.feature_extractor(
        samples.astype(np.float32) / 32768, sampling_rate=RATE, return_tensors="pt"
    ).input_features
    with torch.inference_mode():
        out = model.generate(features, language="en", task="transcribe", max_new_tokens=max_tokens)
    return out[0].tolist()


@pytest.mark.seed_row("Whisper", "transcription", impl="native")
def test_begin_suppress_tokens_apply_to_the_first_token_as_in_hf(
    whisper: str, tmp_path: Path
) -> None:
    """Real checkpoints set begin_suppress_tokens ([220, eos]); the tiny builder sets none, so
    a copy of it suppresses the token HF would otherwise pick first (and EOS)."""
    samples = _tone_int16()
    plain = _hf_generate(whisper, samples, 6)  # the generated tokens (no decoder prompt)
    eos = json.loads((Path(whisper) / "generation_config.json").read_text())["eos_token_id"]
    copy = _checkpoint_copy(whisper, tmp_path, begin_suppress_tokens=[plain[0], eos])
    expected = _hf_generate(copy, samples, 6)
    assert expected[0] != plain[0] and plain[0] in expected  # banned only as the first token
    llm = LLM(copy, task="transcription")
    try:
        output = llm.transcribe(_wav_bytes(samples), language="en", sampling_params=GREEDY_6)
    finally:
        llm.close()
    assert list(output.outputs[0].token_ids) == expected


def _checkpoint_copy(whisper: str, tmp_path: Path, **generation: Any) -> str:
    """A copy of the tiny Whisper whose generation config has `generation` on top (None
    deletes a key); the tiny builder's own output stays as it is."""
    shutil.copytree(whisper, tmp_path / "whisper")
    config_path = tmp_path / "whisper" / "generation_config.json"
    config = json.loads(config_path.read_text())
    for key, value in generation.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_path.write_text(json.dumps(config))
    return str(tmp_path / "whisper")


def test_the_transcriber_is_built_at_start_up(whisper: str, tmp_path: Path) -> None:
    orchestrator = build_orchestrator(served_model(whisper, "transcription"), None, None)
    assert isinstance(orchestrator.transcriber, Transcriber)  # no backend touched, no request
    broken = _checkpoint_copy(whisper, tmp_path, decoder_start_token_id=None)
    with pytest.raises(InvalidRequest, match="sets no decoder_start_token_id"):
        build_orchestrator(served_model(broken, "transcription"), None, None)


def test_encoder_states_that_are_not_whole_windows_are_refused(llm: LLM) -> None:
    transcriber = Transcriber.of(llm._orchestrator)
    size = transcriber.window_positions
    with pytest.raises(InvalidRequest, match=rf"returned {size + 1} encoder states.* {size}-pos"):
        transcriber._windows(torch.zeros(size + 1, 8))
    assert transcriber._windows(torch.zeros(2 * size, 8)).shape == (2, size, 8)
