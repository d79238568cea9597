"""Whisper's audio encoder: log-mel features of 30 s windows -> the states its decoder's
cross-attention reads (they feed the LM's cross-attention cache, not prompt positions).

A clip longer than one window (the feature extractor's `chunk_length`, 30 s for real
checkpoints) is cut into consecutive windows, each padded like a short clip, as vLLM's
transcription endpoint does; the item's output is the windows' states end to end,
`[num_windows * max_source_positions, d_model]`, and the gateway transcribes them in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoder_service.towers.base import Tower, TowerInput
from protos.modality import Modality


class WhisperTower(Tower):
    """WhisperEncoder with the checkpoint's feature extractor; audio only."""

    architecture = "WhisperForConditionalGeneration"
    modalities = (Modality.AUDIO,)
    roots = ("encoder",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers import AutoFeatureExtractor

        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.path)

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return {"encoder": WhisperEncoder(config)}

    @property
    def hidden_size(self) -> int:
        return int(self.config.d_model)

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def window_samples(self) -> int:
        """Samples of one window (the feature extractor's `n_samples`)."""
        return int(self.feature_extractor.n_samples)

    def prepare(
        self,
        modality: Modality,
        decoded: Any,
        index: int,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> TowerInput:
        """[num_samples] float32 at `sampling_rate` -> features [num_windows, mel, frames]."""
        size = self.window_samples
        windows = [decoded[start : start + size] for start in range(0, len(decoded), size)]
        features = self.feature_extractor(
            windows or [decoded],
            sampling_rate=self.sampling_rate,
            return_tensors="pt",
            **self.kwargs_for(processor_kwargs),
        ).input_features  # [num_windows, mel, frames], each window padded to `size`
        return TowerInput(modality, {"input_features": features})

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        """One encoder call for every window of every item; per item
        `[num_windows * max_source_positions, d_model]`."""
        features = torch.cat([item.tensors["input_features"] for item in inputs])
        hidden = self.module["encoder"](features.to(self.device, self.dtype)).last_hidden_state
        sizes = [item.tensors["input_features"].shape[0] for item in inputs]
        return [part.reshape(-1, hidden.shape[-1]) for part in hidden.split(sizes)]
