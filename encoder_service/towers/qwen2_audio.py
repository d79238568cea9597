"""Qwen2-Audio: a Whisper-style audio tower and a linear projector; audio only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoder_service.errors import MediaLimitExceeded
from encoder_service.towers.base import Tower, TowerInput
from protos.modality import Modality


class Qwen2AudioTower(Tower):
    """Whisper-style audio tower + linear projector.

    An item of L mel frames (the feature extractor's attention mask) gives
    (((L - 1) // 2 + 1) - 2) // 2 + 1 tokens, as HF's processor and model compute it.
    """

    architecture = "Qwen2AudioForConditionalGeneration"
    modalities = (Modality.AUDIO,)
    roots = ("audio_tower", "multi_modal_projector")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers import AutoFeatureExtractor

        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.path)

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers import AutoModel
        from transformers.models.qwen2_audio.modeling_qwen2_audio import (
            Qwen2AudioMultiModalProjector,
        )

        return {
            "audio_tower": AutoModel.from_config(config.audio_config),
            "multi_modal_projector": Qwen2AudioMultiModalProjector(config),
        }

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def max_seconds(self) -> float:
        """The feature extractor's window; HF would silently cut longer audio."""
        return float(self.feature_extractor.n_samples / self.sampling_rate)

    def prepare(
        self,
        modality: Modality,
        decoded: Any,
        index: int,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> TowerInput:
        seconds = decoded.shape[0] / self.sampling_rate
        if seconds > self.max_seconds:
            raise MediaLimitExceeded(
                modality,
                index,
                f"lasts {seconds:.2f} s; this model encodes at most {self.max_seconds:g} s per item",
            )
        features = self.feature_extractor(
            decoded,
            sampling_rate=self.sampling_rate,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
            **self.kwargs_for(processor_kwargs),
        )
        tensors = {
            "input_features": features["input_features"][0],  # [mel, frames]
            "feature_length": features["attention_mask"][0].sum(),  # scalar: valid frames
        }
        return TowerInput(modality, tensors)

    @staticmethod
    def num_tokens(num_feature_frames: int) -> int:
        """Audio tokens for an item of `num_feature_frames` valid mel frames."""
        return (((num_feature_frames - 1) // 2 + 1) - 2) // 2 + 1

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        tower = self.module["audio_tower"]
        features = torch.stack([item.tensors["input_features"] for item in inputs])
        features = features.to(self.device, self.dtype)  # [B, mel, frames]
        lengths = torch.stack([item.tensors["feature_length"] for item in inputs]).to(self.device)
        conv_lengths, num_tokens = tower._get_feat_extract_output_lengths(lengths)
        max_len = (features.shape[-1] - 2) // 2 + 1
        valid = torch.arange(max_len, device=self.device)[None, :] < conv_lengths[:, None]
        dummy = torch.zeros(len(inputs), max_len, 1, dtype=self.dtype, device=self.device)
        mask = create_bidirectional_mask(
            config=tower.config, inputs_embeds=dummy, attention_mask=valid.long()
        )
        hidden = tower(features, attention_mask=mask).last_hidden_state  # [B, tokens, d_model]
        embeddings = self.module["multi_modal_projector"](hidden)  # [B, tokens, hidden]
        return [embeddings[i, :n] for i, n in enumerate(num_tokens.tolist())]
