"""Prompt building: chat template, placeholder expansion, placeholder ranges, M-RoPE positions.

The gateway turns a raw prompt (with the model's placeholders) or chat messages into the LM's
prompt token ids exactly as the model's HF processor would: each item's placeholder token is
repeated once per embedding row, the whole text is tokenized once, and the run of pad tokens of
each item is recorded so the LM can scatter that item's embeddings there.

Per-family differences (which token is repeated, what surrounds it in a raw prompt, M-RoPE) live
in `gateway.prompt.placeholders`; chat templates in `gateway.prompt.chat_template`.

Tokenization follows the HF processor (`add_special_tokens=True`), except that a prompt that
already starts with the tokenizer's BOS token gets no second one; this is the rule of HF's
`processor.apply_chat_template(tokenize=True)`, so a rendered chat prompt gets exactly the ids
HF gives for that conversation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gateway.prompt.chat_template import (
    normalize_content,
    part_kind,
    read_chat_template,
    uses_content_parts,
)
from gateway.prompt.layout import TextLayout, text_layout
from gateway.prompt.mrope import VisionRun, mrope_positions
from gateway.prompt.placeholders import (
    ModalityTokens,
    family_for,
    processor_tokens,
    resolve_tokens,
)
from gateway.prompt.slots import BuiltPrompt, MediaSlot, PlaceholderRange
from gateway.prompt.splice import before_prompt, locate_embeds, splice, take_token_ids
from protos.errors import InvalidRequest
from protos.hf_processor import load_processor
from protos.modality import MEDIA_MODALITIES
from protos.model_source import CONFIG_PATTERNS, resolve_model

MODALITIES: tuple[str, ...] = tuple(m.value for m in MEDIA_MODALITIES)


class PromptBuilder:
    """Builds the LM's prompt token ids the way the model's HF processor does.

    Args:
        tokenizer: the model's HF tokenizer.
        config: the model's HF config (`architectures`, placeholder token ids, vision config).
        chat_template: the Jinja chat template, or None when the model has none.
        tokens: SPLICED models: each modality's placeholder, as the processor names it.
        layout: SPLICED models whose processor rewrites the text first (`gateway.prompt.layout`).
    """

    def __init__(
        self,
        tokenizer: Any,
        config: Any,
        chat_template: str | None = None,
        tokens: Mapping[str, ModalityTokens] | None = None,
        layout: TextLayout | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.layout = layout
        self.config = config
        self.architecture: str = (getattr(config, "architectures", None) or [""])[0]
        self.chat_template = chat_template
        self.family = family_for(self.architecture, config)
        self.tokens: dict[str, ModalityTokens] = dict(tokens or {}) or {
            m: resolve_tokens(fmt, config, tokenizer) for m, fmt in self.family.formats.items()
        }
        self._pad_modality = {t.pad_token: m for m, t in self.tokens.items()}
        pads = sorted(self._pad_modality, key=len, reverse=True)  # longest first
        self._pad_pattern = re.compile("|".join(map(re.escape, pads))) if pads else None
        vision = getattr(config, "vision_config", None)
        self.spatial_merge_size = int(getattr(vision, "spatial_merge_size", 1) or 1)
        self.tokens_per_second = float(getattr(vision, "tokens_per_second", 1) or 1)

    @classmethod
    def from_pretrained(
        cls, model: str | Path, *, trust_remote_code: bool = False, revision: str | None = None
    ) -> PromptBuilder:
        """Load the config, tokenizer and chat template of `model` (a folder or a hub id)."""
        from transformers import AutoConfig, AutoTokenizer

        model = resolve_model(str(model), revision=revision, allow_patterns=CONFIG_PATTERNS)

        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        architecture = (getattr(config, "architectures", None) or [""])[0]
        template = read_chat_template(model, tokenizer)
        if not family_for(architecture, config).spliced:
            return cls(tokenizer, config, template)
        processor = load_processor(model)
        tokens = processor_tokens(model, tokenizer, processor)
        return cls(tokenizer, config, template, tokens, text_layout(processor))

    # ------------------------------------------------------------------ public API

    @property
    def modalities(self) -> tuple[str, ...]:
        """The media modalities this model's prompts can hold."""
        return tuple(self.tokens)

    def placeholder(self, modality: str) -> str:
        """What one item of `modality` looks like in a raw prompt, e.g. "<image>"."""
        return self._tokens_for(modality).placeholder

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Render OpenAI/HF-style messages with the model's chat template (no tokenization).

        Content is a string or a list of parts: {"type": "text", "text": ...}, {"type": "image"},
        {"type": "video"}, {"type": "audio"} (and the OpenAI `image_url` / `input_audio` kinds).
        `template_kwargs` go to the template (e.g. `continue_final_message`, `tools`).
        """
        if not self.chat_template:
            raise InvalidRequest(
                f"{self._name} has no chat template; send a raw prompt instead of chat messages"
            )
        conversation = self._normalize_messages(messages)
        from jinja2.exceptions import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                conversation,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **template_kwargs,
            )
        except TemplateError as error:
            raise InvalidRequest(f"The chat template rejected the messages: {error}") from error
        except ValueError as error:  # transformers' own checks, e.g. continue_final_message
            raise InvalidRequest(f"The messages cannot be rendered: {error}") from error

    def build(
        self,
        text: str,
        items: Sequence[MediaSlot],
        *,
        add_special_tokens: bool | None = None,
    ) -> BuiltPrompt:
        """Expand the placeholders of `text` for `items`, tokenize, locate each item's rows.

        Args:
            text: raw prompt (or rendered chat) with one placeholder per item.
            items: the prompt's media items; the k-th item of a modality fills the k-th
                placeholder of that modality (HF semantics), so prompt order is natural.
            add_special_tokens: None = like the HF processor (see the module docstring).
        Raises:
            InvalidRequest: a modality the model does not take, placeholder counts that
                disagree with the items, or a grid that disagrees with the embedding rows.
        """
        if self.family.spliced:
            return self._build_spliced(text, items, add_special_tokens)
        lengths = [self._item_length(i, item) for i, item in enumerate(items)]
        by_modality = self._group(items, lengths)
        self._check_counts(text, by_modality)
        token_ids = self._tokenize(self._expand(text, by_modality), add_special_tokens)
        ranges = self._locate(token_ids, by_modality)
        positions = self._mrope(len(token_ids), ranges, items) if self.family.mrope else None
        return BuiltPrompt(token_ids, ranges, positions)

    def text_only(self, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of a prompt without media (same special-token rule as `build`)."""
        return self.build(text, (), add_special_tokens=add_special_tokens).token_ids

    # ------------------------------------------------------------------ helpers

    @property
    def _name(self) -> str:
        return self.architecture or "This model"

    def _tokens_for(self, modality: str) -> ModalityTokens:
        if modality not in self.tokens:
            if modality not in MODALITIES:
                raise InvalidRequest(
                    f"Unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}"
                )
            accepted = ", ".join(self.tokens) or "text only"
            raise InvalidRequest(
                f"{self._name} does not take {modality} input (it takes {accepted}), "
                f"so a prompt cannot hold {modality} placeholders"
            )
        return self.tokens[modality]

    def _normalize_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        as_parts = uses_content_parts(self.chat_template or "")
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    kind = part_kind(part)
                    if kind != "text":
                        self._tokens_for(kind)  # refuse a modality the model does not take
            normalized = normalize_content(content, as_parts, self.placeholder)
            out.append({**message, "content": normalized})
        return out

    def _item_length(self, index: int, item: MediaSlot) -> int:
        """Pad tokens one item expands to; Qwen-VL counts come from its grid (HF's rule)."""
        self._tokens_for(item.modality)
        if not (self.family.mrope and item.modality in ("image", "video")):
            return item.num_tokens
        if item.grid_thw is None:
            raise InvalidRequest(f"{self._name} needs grid_thw for {item.modality} item {index}")
        t, h, w = item.grid_thw
        length = t * h * w // self.spatial_merge_size**2
        if length != item.num_tokens:
            raise InvalidRequest(
                f"{item.modality} item {index} has {item.num_tokens} embedding rows, but its "
                f"grid_thw {tuple(item.grid_thw)} needs {length}"
            )
        return length

    def _group(
        self, items: Sequence[MediaSlot], lengths: Sequence[int]
    ) -> dict[str, list[tuple[int, int]]]:
        """modality -> [(item_index, length), ...] in item order, for every known modality."""
        groups: dict[str, list[tuple[int, int]]] = {m: [] for m in self.tokens}
        for index, (item, length) in enumerate(zip(items, lengths, strict=True)):
            groups[item.modality].append((index, length))
        return groups

    def _check_counts(self, text: str, by_modality: Mapping[str, list[tuple[int, int]]]) -> None:
        found = self._pad_pattern.findall(text) if self._pad_pattern else []
        for modality, group in by_modality.items():
            tokens = self.tokens[modality]
            num_found = sum(self._pad_modality[pad] == modality for pad in found)
            if num_found != len(group):
                raise InvalidRequest(
                    f"The prompt has {num_found} {tokens.pad_token} placeholder(s) but "
                    f"{len(group)} {modality}(s) were given; put one {tokens.placeholder} "
                    f"where each {modality} goes"
                )

    def _expand(self, text: str, by_modality: Mapping[str, list[tuple[int, int]]]) -> str:
        """Repeat the k-th pad token of each modality once per row of its k-th item."""
        if self._pad_pattern is None:
            return text
        lengths = {self.tokens[m].pad_token: iter(g) for m, g in by_modality.items()}

        def repeat(match: re.Match[str]) -> str:
            return match.group(0) * next(lengths[match.group(0)])[1]

        return self._pad_pattern.sub(repeat, text)

    def _tokenize(self, text: str, add_special_tokens: bool | None) -> list[int]:
        if add_special_tokens is None:
            bos = getattr(self.tokenizer, "bos_token", None)
            add_special_tokens = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def _locate(
        self, token_ids: Sequence[int], by_modality: Mapping[str, list[tuple[int, int]]]
    ) -> tuple[PlaceholderRange, ...]:
        ranges: list[PlaceholderRange] = []
        for modality, group in by_modality.items():
            pad_id = self.tokens[modality].pad_token_id
            hits = [i for i, token in enumerate(token_ids) if token == pad_id]
            ranges.extend(_split_runs(hits, group, self.tokens[modality].pad_token))
        return tuple(sorted(ranges, key=lambda r: r.offset))

    def _build_spliced(
        self, text: str, items: Sequence[MediaSlot], add_special_tokens: bool | None
    ) -> BuiltPrompt:
        """Each item's placeholder becomes the replacement text its encoder's processor gave,
        the whole text is tokenized once (as HF's processor does), and each item takes the
        positions of its embed token in prompt order."""
        for index, item in enumerate(items):
            self._tokens_for(item.modality)
            if item.replacement is None or item.embed_token_id is None:
                raise InvalidRequest(
                    f"{self._name} builds each {item.modality}'s prompt tokens from its "
                    f"processor; {item.modality} item {index} came without them (precomputed "
                    "embeddings are not supported for this model yet)"
                )
        if self.layout is not None:
            text = self.layout.apply(text, sum(item.modality == "image" for item in items))
            if add_special_tokens is None:
                add_special_tokens = self.layout.add_special_tokens
        expanded, order = splice(text, items, self.placeholder)
        first = before_prompt(items)  # BLIP-2: the image's tokens, then the prompt with BOS
        head = "".join(str(items[i].replacement) for i in first)
        token_ids = self._tokenize(head, False) if head else []
        token_ids += self._tokenize(expanded, add_special_tokens)
        ranges = locate_embeds(token_ids, items, first + order)
        return take_token_ids(BuiltPrompt(token_ids, ranges), items)

    def _mrope(
        self, num_tokens: int, ranges: Sequence[PlaceholderRange], items: Sequence[MediaSlot]
    ) -> torch.Tensor:
        runs = [
            VisionRun(
                r.offset, _grid(items[r.item_index]), self._time_interval(items[r.item_index])
            )
            for r in ranges
            if items[r.item_index].modality in ("image", "video")
        ]
        return mrope_positions(num_tokens, runs, self.spatial_merge_size)  # [3, T]

    def _time_interval(self, item: MediaSlot) -> float:
        if item.modality != "video" or not self.family.time_scaled_video:
            return 1.0
        seconds = 1.0 if item.second_per_grid_t is None else item.second_per_grid_t
        # NOTE: float32 like HF's `tokens_per_second * second_per_grid_ts[i]`.
        return float(torch.tensor(seconds, dtype=torch.float32) * self.tokens_per_second)


def _grid(item: MediaSlot) -> tuple[int, int, int]:
    assert item.grid_thw is not None  # checked in _item_length
    t, h, w = item.grid_thw
    return int(t), int(h), int(w)


def _split_runs(
    hits: Sequence[int], group: Sequence[tuple[int, int]], pad_token: str
) -> list[PlaceholderRange]:
    """Cut the positions of one pad token into each item's contiguous run, in order."""
    if len(hits) != sum(length for _, length in group):
        raise RuntimeError(
            f"expanded prompt has {len(hits)} {pad_token} tokens, expected "
            f"{sum(length for _, length in group)}: the tokenizer does not keep it atomic"
        )
    ranges = []
    start = 0
    for item_index, length in group:
        offset = hits[start]
        if hits[start + length - 1] != offset + length - 1:
            raise RuntimeError(f"the {pad_token} tokens of item {item_index} are not contiguous")
        ranges.append(PlaceholderRange(item_index, offset, length))
        start += length
    return ranges
