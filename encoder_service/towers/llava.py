"""LLaVA: a CLIP or SigLIP vision tower and the multi-modal projector; images only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoder_service.errors import MediaError
from encoder_service.towers.base import Tower, TowerInput, group_by_shape
from protos.modality import Modality

NATIVE_LLAVA_VISION = frozenset({"clip_vision_model", "siglip_vision_model"})


class LlavaTower(Tower):
    """CLIP/SigLIP vision tower + multi_modal_projector, honouring vision_feature_layer (an
    int or a list, concatenated) and vision_feature_select_strategy ("default" drops CLS)."""

    architecture = "LlavaForConditionalGeneration"
    modalities = (Modality.IMAGE,)
    roots = ("vision_tower", "multi_modal_projector")

    @classmethod
    def handles(cls, config: Any) -> bool:
        """CLIP and SigLIP towers only: a Pixtral tower (pixtral-12b) takes image sizes and
        [IMG_BREAK] rows, which the generic tower gets from its processor.
        NOTE: gateway.prompt.placeholders.NATIVE_LLAVA_VISION says the same to the gateway."""
        model_type = getattr(getattr(config, "vision_config", None), "model_type", None)
        return model_type is None or model_type in NATIVE_LLAVA_VISION

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from transformers import AutoImageProcessor

        self.image_processor = AutoImageProcessor.from_pretrained(self.path, backend="pil")

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        from transformers import AutoModel
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        return {
            "vision_tower": AutoModel.from_config(config.vision_config),
            "multi_modal_projector": LlavaMultiModalProjector(config),
        }

    def check_embeddings(
        self, modality: Modality, embeddings: torch.Tensor, metadata: Mapping[str, Any], index: int
    ) -> dict[str, Any]:
        """Every image takes the same number of rows (the tower's patches); another count of
        precomputed rows is refused with both numbers."""
        rows, expected = int(embeddings.shape[0]), self._rows_per_image()
        if rows != expected:
            raise MediaError(
                modality,
                index,
                f"precomputed embeddings have {rows} rows, but {self.architecture} takes "
                f"{expected} per image",
            )
        return dict(metadata)

    def _rows_per_image(self) -> int:
        """Rows of one image, from a stand-in image through the processor and the tower."""
        if "_rows" not in self.__dict__:
            from PIL import Image

            probe = self.prepare(Modality.IMAGE, Image.new("RGB", (64, 64)), 0)
            self.__dict__["_rows"] = int(self.forward([probe])[0].shape[0])
        return self.__dict__["_rows"]

    def prepare(
        self,
        modality: Modality,
        decoded: Any,
        index: int,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> TowerInput:
        kwargs = self.kwargs_for(processor_kwargs)
        pixel_values = self.image_processor(images=[decoded], return_tensors="pt", **kwargs)[
            "pixel_values"
        ]
        return TowerInput(modality, {"pixel_values": pixel_values[0]})  # [3, H, W]

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        results: list[torch.Tensor | None] = [None] * len(inputs)
        for positions in group_by_shape(inputs, "pixel_values"):
            pixel_values = torch.stack([inputs[i].tensors["pixel_values"] for i in positions])
            embeddings = self._embed(pixel_values.to(self.device, self.dtype))  # [B, N, hidden]
            for i, item in zip(positions, embeddings, strict=True):
                results[i] = item
        return results  # type: ignore[return-value]

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_tokens, hidden], as LlavaModel.get_image_features."""
        layers = self.config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        hidden_states = self.module["vision_tower"](
            pixel_values, output_hidden_states=True, return_dict=True
        ).hidden_states
        selected = [hidden_states[layer] for layer in layers]  # each [B, 1 + patches, vision]
        if self.config.vision_feature_select_strategy == "default":
            selected = [states[:, 1:] for states in selected]  # drop CLS
        return self.module["multi_modal_projector"](torch.cat(selected, dim=-1))
