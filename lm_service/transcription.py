"""Speech to text with an encoder-decoder model (Whisper), run dense through HF `generate`.

NOTE: the paged engine runs decoder-only models; Whisper's cross-attention has no place in
its KV layout, so a transcription model runs here, whole, one request at a time.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numpy as np
import torch

from protos.errors import InvalidRequest, Unsupported
from protos.model_source import ALL_PATTERNS, resolve_model
from protos.sampling_params import SamplingParams

TASKS = ("transcribe", "translate")


class TranscriptionResult(NamedTuple):
    token_ids: tuple[int, ...]  # the generated tokens, without the decoder prompt
    text: str
    finish_reason: str  # "stop" (EOS) or "length" (max_tokens)


class TranscriptionModel:
    """A Whisper-style model and its processor, answering one audio clip at a time.

    Args:
        model: WhisperForConditionalGeneration (or alike), in eval mode.
        processor: its WhisperProcessor (feature extractor + tokenizer).
        device: where the model lives.
    """

    def __init__(self, model: Any, processor: Any, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        self.architecture = type(model).__name__
        self._lock = threading.Lock()  # NOTE: generate() and torch.manual_seed are not shared

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: str = "float32",
        device: str = "cpu",
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> TranscriptionModel:
        from transformers import AutoConfig, AutoModelForSpeechSeq2Seq, AutoProcessor
        from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

        path = str(resolve_model(path, revision=revision, allow_patterns=ALL_PATTERNS))

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if config.model_type not in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
            raise Unsupported(
                f"task transcription needs a speech-to-text model (e.g. Whisper); {path} is a "
                f"{config.model_type!r} model"
            )
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        model = AutoModelForSpeechSeq2Seq.from_pretrained(
            path, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model.to(device).eval(), processor, torch.device(device))

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def transcribe(
        self, waveform: np.ndarray, language: str | None, task: str, params: SamplingParams
    ) -> TranscriptionResult:
        """[num_samples] float32 mono at `sampling_rate` -> the generated tokens and text.

        Raises InvalidRequest for an unknown language or task, Unsupported for sampling
        options this path does not run.
        """
        language = self.check_language(language)
        check_task(task)
        generate_kwargs = _generate_kwargs(params)
        features = self.processor.feature_extractor(
            waveform, sampling_rate=self.sampling_rate, return_tensors="pt"
        ).input_features  # [1, num_mel_bins, num_frames]
        features = features.to(self.device, self.model.dtype)
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            output = self.model.generate(features, language=language, task=task, **generate_kwargs)
        token_ids = tuple(int(t) for t in output[0].tolist())
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return TranscriptionResult(token_ids, text, self._finish_reason(token_ids, params))

    def check_language(self, language: str | None) -> str | None:
        """ "en" or "<|en|>" -> "en"; None or "" -> None (the model detects it)."""
        if not language:
            return None
        code = language.removeprefix("<|").removesuffix("|>")
        known = getattr(self.model.generation_config, "lang_to_id", None) or {}
        if f"<|{code}|>" not in known:
            codes = sorted(k.removeprefix("<|").removesuffix("|>") for k in known)
            listed = ", ".join(codes[:8]) + (", ..." if len(codes) > 8 else "")
            raise InvalidRequest(
                f"language {language!r} is not one {self.architecture} knows; "
                f"use a code such as {listed or '(none: this model is English-only)'}"
            )
        return code

    def _finish_reason(self, token_ids: tuple[int, ...], params: SamplingParams) -> str:
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        if token_ids and token_ids[-1] in eos_ids:
            return "stop"
        is_short = params.max_tokens is not None and len(token_ids) < params.max_tokens
        return "stop" if is_short else "length"


def check_task(task: str) -> None:
    if task not in TASKS:
        raise InvalidRequest(f"task must be 'transcribe' or 'translate', got {task!r}")


def _generate_kwargs(params: SamplingParams) -> dict[str, Any]:
    """SamplingParams -> HF generate() arguments; refuses what has no equivalent here."""
    unsupported = [
        name
        for name, is_set in (
            ("logprobs", params.logprobs is not None),
            ("stop", bool(params.stop)),
            ("stop_token_ids", bool(params.stop_token_ids)),
            ("ignore_eos", params.ignore_eos),
            ("min_p", params.min_p > 0),
            ("presence_penalty", params.presence_penalty != 0),
            ("frequency_penalty", params.frequency_penalty != 0),
        )
        if is_set
    ]
    if unsupported:
        raise Unsupported(f"transcription does not support {', '.join(unsupported)} yet")
    kwargs: dict[str, Any] = {"do_sample": not params.is_greedy}
    if params.max_tokens is not None:
        kwargs["max_new_tokens"] = params.max_tokens
    if params.min_tokens:
        kwargs["min_new_tokens"] = params.min_tokens
    if params.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = params.repetition_penalty
    if not params.is_greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
        kwargs["top_k"] = max(params.top_k, 0)  # 0: off (HF would default to 50)
    return kwargs
