"""Whisper's audio tower: one window per feature-extractor chunk, each equal to HF's encoder on
that window alone, end to end in one item; a second call is a cache hit."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoFeatureExtractor, WhisperForConditionalGeneration

from encoder_service import Encoder
from encoder_service.registry import tower_class
from encoder_service.towers import WhisperTower
from gateway.tools.tiny_models import tiny_model_path
from protos.encoder_messages import MediaItem

RATE = 16000


def test_windows_equal_hf_encoder_and_are_cached() -> None:
    path = tiny_model_path("whisper")
    encoder = Encoder.from_pretrained(str(path), modality="audio")
    assert isinstance(encoder.tower, WhisperTower)
    assert tower_class("WhisperForConditionalGeneration") is WhisperTower
    rng = np.random.default_rng(0)
    short = 0.1 * rng.standard_normal(RATE).astype(np.float32)  # 1 s: one 2 s window
    long = 0.1 * rng.standard_normal(5 * RATE).astype(np.float32)  # 5 s: three windows
    first = encoder.encode([MediaItem(decoded=(short, RATE)), MediaItem(decoded=(long, RATE))])
    assert [r.num_tokens for r in first] == [100, 300] and not any(r.cache_hit for r in first)

    features = AutoFeatureExtractor.from_pretrained(path)
    hf = WhisperForConditionalGeneration.from_pretrained(path).eval().model.encoder
    size = features.n_samples
    for clip, result in zip((short, long), first, strict=True):
        windows = [clip[s : s + size] for s in range(0, len(clip), size)]
        with torch.inference_mode():
            expected = torch.cat(
                [
                    hf(
                        features(w, sampling_rate=RATE, return_tensors="pt").input_features
                    ).last_hidden_state[0]
                    for w in windows
                ]
            )
        # NOTE: one batched encoder call vs one call per window: float32 rounding only
        torch.testing.assert_close(result.embeddings, expected, atol=1e-4, rtol=1e-4)
    (again,) = encoder.encode([MediaItem(decoded=(long, RATE))])
    assert again.cache_hit and torch.equal(again.embeddings, first[1].embeddings)
