"""What prompt building takes per media item and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gateway.prompt.mrope import mrope_position_delta
from protos.errors import InvalidRequest
from protos.modality import MEDIA_MODALITIES

MODALITIES: tuple[str, ...] = tuple(m.value for m in MEDIA_MODALITIES)


@dataclass(frozen=True, slots=True)
class MediaSlot:
    """What prompt building needs from one encoded media item.

    Args:
        modality: "image", "video" or "audio".
        num_tokens: embedding rows of the item (`[num_tokens, hidden]`).
        content_hash: the encoder's content hash (prefix caching keys on it).
        grid_thw: Qwen2-VL patch grid of an image or video, before spatial merging.
        second_per_grid_t: Qwen2.5-VL seconds per temporal grid of a video.
        placeholder, replacement, embed_token_id: for SPLICED models, the encoder's processor
            said: `placeholder` in the text becomes `replacement`, whose `embed_token_id`
            positions take the embedding rows. `placeholder` BEFORE_PROMPT: the replacement
            goes before the tokenized prompt (BLIP-2).
        token_ids: a discrete-token encoder's ids (Chameleon): they take the embed positions
            as prompt tokens, and the item has no embedding rows.
    """

    modality: str
    num_tokens: int
    content_hash: str
    grid_thw: tuple[int, int, int] | None = None
    second_per_grid_t: float | None = None
    placeholder: str | None = None
    replacement: str | None = None
    embed_token_id: int | None = None
    token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidRequest(
                f"Unknown media modality {self.modality!r}; expected one of {', '.join(MODALITIES)}"
            )
        if self.num_tokens < 1:
            raise InvalidRequest(f"A {self.modality} item must have at least one embedding row")
        if self.grid_thw is not None and (
            len(self.grid_thw) != 3 or any(int(g) < 1 for g in self.grid_thw)
        ):
            raise InvalidRequest(f"grid_thw must be three positive integers, got {self.grid_thw}")


@dataclass(frozen=True, slots=True)
class PlaceholderRange:
    """Where one item's embedding rows go in the prompt.

    Args:
        item_index: index into the items passed to `PromptBuilder.build`.
        offset: first prompt token of the item's embedding rows.
        length: positions from the first to the last embedding row.
        is_embed: per position, whether it takes a row; None when all do (length = rows).
    """

    item_index: int
    offset: int
    length: int
    is_embed: tuple[bool, ...] | None = None

    @property
    def num_embeds(self) -> int:
        return self.length if self.is_embed is None else sum(self.is_embed)


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    """The LM's prompt: token ids, where each media item goes, and M-RoPE positions.

    Args:
        token_ids: prompt token ids, placeholders expanded.
        ranges: one range per item, in prompt order (sorted by offset).
        mrope_positions: [3, len(token_ids)] int64 for M-RoPE models, else None.
    """

    token_ids: list[int]
    ranges: tuple[PlaceholderRange, ...]
    mrope_positions: torch.Tensor | None = None

    @property
    def mrope_position_delta(self) -> int:
        """Decode token n (0-based in the whole sequence) sits at position `n + delta`."""
        if self.mrope_positions is None:
            return 0
        return mrope_position_delta(self.mrope_positions)
