"""Feature functions for Phi-4-multimodal, whose HF model has none.

transformers' Phi4MultimodalModel embeds media inside `embed_tokens_extend`: its image and
audio embeddings write their rows into `inputs_embeds` at the placeholder positions
(`index_put`). Run on a prompt that is nothing but one item's placeholder run, over zeros, that
write IS the item's [num_tokens, hidden] features, computed by HF's own code.

NOTE: HF projects audio with its "vision" projection when the same prompt also has images
(`audio_projection_mode`); an encoder sees one item at a time, so audio here is always
projected as in an audio-only prompt ("speech"). I+A prompts are not supported by this path.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Phi4MultimodalFeatures(nn.Module):
    """Phi4MultimodalModel's media embedding (`embed_tokens_extend`) as feature functions."""

    media_roots: ClassVar[tuple[str, ...]] = ("embed_tokens_extend",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embed_tokens_extend = model.embed_tokens_extend
        self.config = model.config

    def get_image_features(
        self,
        image_pixel_values: torch.Tensor,  # [1, crops, 3, H, W]
        image_sizes: torch.Tensor,  # [1, 2]
        image_attention_mask: torch.Tensor,  # [1, crops, m, m]
        num_img_tokens: torch.Tensor,  # [1]
    ) -> torch.Tensor:
        embed = self.embed_tokens_extend.image_embed
        run, zeros = self._run(self.config.vision_config.image_token_id, num_img_tokens)
        out = embed(
            run,
            zeros,
            image_pixel_values=image_pixel_values,
            image_sizes=image_sizes,
            image_attention_mask=image_attention_mask,
        )
        return out[0]  # [num_tokens, hidden]

    def get_audio_features(
        self,
        audio_input_features: torch.Tensor,  # [1, frames, mel]
        audio_embed_sizes: torch.Tensor,  # [1]
        audio_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embed = self.embed_tokens_extend.audio_embed
        run, zeros = self._run(self.config.audio_config.audio_token_id, audio_embed_sizes)
        out = embed(
            run,
            zeros,
            audio_input_features=audio_input_features,
            audio_embed_sizes=audio_embed_sizes,
            audio_attention_mask=audio_attention_mask,
            audio_projection_mode="speech",
        )
        return out[0]  # [num_tokens, hidden]

    def _run(self, token_id: int, counts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, n] placeholder ids and [1, n, hidden] zeros for one item of n tokens."""
        count = int(torch.as_tensor(counts).sum())
        weight = self.embed_tokens_extend.image_embed.img_projection_down.weight
        ids = torch.full((1, count), token_id, dtype=torch.long, device=weight.device)
        return ids, torch.zeros(1, count, self.config.hidden_size, dtype=weight.dtype)
