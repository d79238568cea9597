"""The generic tower: any checkpoint transformers implements, driven by its own HF processor.

Nothing here is model-specific:
- the checkpoint's HF class is built on the meta device and only its media modules (everything
  but the language model) are read from the checkpoint;
- the processor prepares one item (`_process_images` / `_process_videos` / `_process_audio`)
  and says which text replaces the item's placeholder (`replace_image_token`, ...);
- the model's own `get_image_features` / `get_video_features` / `get_audio_features` (or, for
  discrete-token encoders such as Chameleon, `get_image_tokens`) turns it into LM embeddings.

The answer carries, besides the embeddings, the placeholder, its replacement text and the token
id whose positions take the embedding rows (the model's `image_token_id`), so the gateway can
splice any model's prompt without knowing the model. A discrete-token encoder answers token
ids ([num_tokens] int64) instead of embeddings: they take the embed positions as prompt tokens.
A processor that places images itself, before the prompt (BLIP-2: no `replace_image_token`),
answers the placeholder `BEFORE_PROMPT` (see `encoder_service.towers.placement`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from encoder_service.errors import MediaError
from encoder_service.towers.base import Tower, TowerInput
from encoder_service.towers.media_modules import MediaModules, load_media_modules
from encoder_service.towers.placement import before_prompt_replacement
from protos.encoder_messages import BEFORE_PROMPT
from protos.errors import Unsupported
from protos.hf_processor import load_processor
from protos.modality import Modality

# modality -> (processor method, processor token attribute, model method, config id fields)
_ROUTES: dict[Modality, tuple[str, str, str, tuple[str, ...]]] = {
    Modality.IMAGE: (
        "_process_images",
        "image_token",
        "get_image_features",
        ("image_token_id", "image_token_index"),
    ),
    Modality.VIDEO: (
        "_process_videos",
        "video_token",
        "get_video_features",
        ("video_token_id", "video_token_index"),
    ),
    Modality.AUDIO: (
        "_process_audio",
        "audio_token",
        "get_audio_features",
        ("audio_token_id", "audio_token_index"),
    ),
}
_KWARGS_GROUPS = {
    Modality.IMAGE: "images_kwargs",
    Modality.VIDEO: "videos_kwargs",
    Modality.AUDIO: "audio_kwargs",
}
# (width, height) of the stand-in images
_PROBE_SIZES = ((64, 64), (16, 16), (128, 32), (32, 128), (256, 256))
_TOKENS_METHOD = "get_image_tokens"  # the image route of discrete-token encoders
# Processor outputs that describe the text, not the media: never passed to the model.
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})


class _RunTemplate(NamedTuple):
    """One item written as prefix + embed token x rows + suffix in place of its placeholder."""

    placeholder: str
    prefix: str
    token: str
    suffix: str
    embed_token_id: int
    num_rows: int | None  # the same for every item; None: it depends on the item's size


class GenericTower(Tower):
    """The checkpoint's media modules and processor, whatever the architecture."""

    architecture: ClassVar[str] = "*"
    modalities: ClassVar[tuple[Modality, ...]] = (Modality.IMAGE, Modality.VIDEO, Modality.AUDIO)
    roots: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: Any,
        path: Path,
        media: MediaModules,
        processor: Any,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(config, path, nn.ModuleDict(), dtype, device)
        self.media = media
        self.processor = processor
        self.architecture = media.architecture  # type: ignore[misc]  # per instance here
        self.modalities = supported_modalities(media.base, processor)  # type: ignore[misc]
        # image tokens the processor puts before the prompt itself; None: it replaces them
        self.before_prompt = before_prompt_replacement(processor, self.modalities)
        # discrete-token encoders (Chameleon's VQ codes) answer ids, not embeddings
        self.emits_token_ids = callable(getattr(media.base, _TOKENS_METHOD, None))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, config: Any, *, dtype: torch.dtype, device: torch.device
    ) -> GenericTower:
        media = load_media_modules(Path(path), config, dtype=dtype, device=device)
        processor = load_processor(path)
        return cls(config, Path(path), media, processor, dtype, device)

    @staticmethod
    def build_modules(config: Any) -> dict[str, nn.Module]:
        raise NotImplementedError("GenericTower builds the checkpoint's own HF class")

    @property
    def sampling_rate(self) -> int:
        extractor = getattr(self.processor, "feature_extractor", None) or getattr(
            self.processor, "audio_processor", None
        )
        if extractor is None:
            raise NotImplementedError(f"{self.architecture} takes no audio")
        return int(extractor.sampling_rate)

    def prepare(
        self,
        modality: Modality,
        decoded: Any,
        index: int,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> TowerInput:
        _, token_attr, _, id_fields = _ROUTES[modality]
        kwargs = self._processor_kwargs(modality, processor_kwargs)
        try:
            processed, replacement = self._process(modality, _hf_item(decoded), kwargs)
        except (ValueError, TypeError, RuntimeError) as error:
            raise MediaError(modality, index, f"the processor refused it: {error}") from error
        tensors = {
            key: value
            for key, value in processed.items()
            if key not in _TEXT_KEYS and isinstance(value, torch.Tensor)
        }
        token = str(getattr(self.processor, token_attr))
        placeholder = BEFORE_PROMPT if self._is_before_prompt(modality) else token
        metadata = {
            "placeholder": placeholder,
            "replacement": replacement or token,
            "embed_token_id": self._embed_token_id(id_fields, token),
        }
        return TowerInput(modality, tensors, metadata)

    def check_embeddings(
        self, modality: Modality, embeddings: torch.Tensor, metadata: Mapping[str, Any], index: int
    ) -> dict[str, Any]:
        """Precomputed embeddings ("E" inputs) get the replacement an item of that many rows
        has, when the model writes one item as one run of its embed token (LLaVA-NeXT,
        InternVL, BLIP-2, PaliGemma); a model whose layout depends on the image (tiles,
        row breaks) cannot place bare embeddings and says so. Where every image takes the
        same number of rows (BLIP-2's queries, PaliGemma's patches) another count is refused."""
        template = self._run_template(modality)
        if template is None:
            raise MediaError(
                modality,
                index,
                f"{self.architecture} lays out each {modality} by its size (tiles or row "
                "breaks), so precomputed embeddings cannot be placed; send the file instead",
            )
        rows = int(embeddings.shape[0])
        if template.num_rows is not None and rows != template.num_rows:
            raise MediaError(
                modality,
                index,
                f"precomputed embeddings have {rows} rows, but {self.architecture} takes "
                f"{template.num_rows} per {modality}",
            )
        return {
            **metadata,
            "placeholder": template.placeholder,
            "replacement": template.prefix + template.token * rows + template.suffix,
            "embed_token_id": template.embed_token_id,
        }

    def _process(
        self, modality: Modality, item: Any, kwargs: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any], str | None]:
        """The processor's tensors for one item, and the text that replaces its placeholder."""
        if self._is_before_prompt(modality):
            return self.processor.image_processor([item], **kwargs), self.before_prompt
        process = _ROUTES[modality][0]
        processed, replacements = getattr(self.processor, process)([item], **kwargs)
        return processed, replacements[0] if replacements else None

    def _is_before_prompt(self, modality: Modality) -> bool:
        return modality is Modality.IMAGE and self.before_prompt is not None

    @torch.inference_mode()
    def forward(self, inputs: Sequence[TowerInput]) -> list[torch.Tensor]:
        # NOTE: one item per call: processors pad or tile per item, and the HF feature
        # functions take a batch of one as readily as any; concurrency batches items upstream.
        return [self._features(item) for item in inputs]

    # ------------------------------------------------------------------ helpers

    def _processor_kwargs(
        self, modality: Modality, request_kwargs: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The processor's own defaults for `modality` (e.g. Idefics3's return_row_col_info)
        with --mm-processor-kwargs and the request's on top, distributed as its `__call__`
        merges them."""
        tokenizer = getattr(self.processor, "tokenizer", None)
        merged = self.processor._merge_kwargs(
            tokenizer_init_kwargs=getattr(tokenizer, "init_kwargs", {}),
            return_tensors="pt",
            **self.kwargs_for(request_kwargs),
        )
        return dict(merged[_KWARGS_GROUPS[modality]])

    def _run_template(self, modality: Modality) -> _RunTemplate | None:
        """How one item is written when its embed token forms a single run (from probe
        items), else None. Cached per modality."""
        cache = self.__dict__.setdefault("_templates", {})
        if modality not in cache:
            cache[modality] = self._probe_template(modality)
        return cache[modality]

    def _probe_template(self, modality: Modality) -> _RunTemplate | None:
        if modality is not Modality.IMAGE:
            return None  # NOTE: only images have E rows among the generic architectures
        from PIL import Image

        # NOTE: stand-ins of several sizes and shapes: anyres and tiling give them different
        # counts (a tiny one takes one tile, a wide one several), fixed-count models never do
        stand_ins = [Image.new("RGB", size, (127, 127, 127)) for size in _PROBE_SIZES]
        first = self._template_of(self.prepare(modality, stand_ins[0], 0))
        if first is None:
            return None
        counts = {first.num_rows}
        for stand_in in stand_ins[1:]:
            try:
                other = self._template_of(self.prepare(modality, stand_in, 0))
            except MediaError:  # a size this processor refuses: the count is not known fixed
                other = None
            counts.add(other.num_rows if other is not None else None)
        return first if len(counts) == 1 else first._replace(num_rows=None)

    def _template_of(self, probe: TowerInput) -> _RunTemplate | None:
        replacement = str(probe.metadata["replacement"])
        embed_token_id = int(probe.metadata["embed_token_id"])
        token = self.processor.tokenizer.convert_ids_to_tokens(embed_token_id)
        first = replacement.find(token)
        if first < 0:
            return None
        end = first
        while replacement.startswith(token, end):
            end += len(token)
        prefix, suffix = replacement[:first], replacement[end:]
        if token in suffix:
            return None
        num_rows = (end - first) // len(token)
        placeholder = str(probe.metadata["placeholder"])
        return _RunTemplate(placeholder, prefix, token, suffix, embed_token_id, num_rows)

    def _embed_token_id(self, id_fields: tuple[str, ...], placeholder: str) -> int:
        for name in id_fields:
            for config in (self.config, self.config.get_text_config()):
                value = getattr(config, name, None)
                if value is not None:
                    return int(value)
        return int(self.processor.tokenizer.convert_tokens_to_ids(placeholder))

    def _features(self, item: TowerInput) -> torch.Tensor:
        """[num_tokens, hidden] embeddings, or [num_tokens] int64 ids (discrete tokens)."""
        discrete = self.emits_token_ids and item.modality is Modality.IMAGE
        name = _TOKENS_METHOD if discrete else _ROUTES[item.modality][2]
        method = getattr(self.media.base, name)
        kwargs = _accepted(method, {k: self._to_device(v) for k, v in item.tensors.items()})
        output = method(**kwargs)
        if discrete:
            return output.reshape(-1).long()  # [num_tokens]
        return _flatten(output).to(self.dtype)  # [num_tokens, hidden]

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.to(self.device, self.dtype)
        return tensor.to(self.device)


def supported_modalities(base: nn.Module, processor: Any) -> tuple[Modality, ...]:
    """The media the processor prepares and the model embeds."""
    found = []
    for modality, (_, token_attr, method, _) in _ROUTES.items():
        if getattr(processor, token_attr, None) is not None and hasattr(base, method):
            found.append(modality)
    if not found:
        raise Unsupported(f"{type(base).__name__} has no image, video or audio features")
    return tuple(found)


def _hf_item(decoded: Any) -> Any:
    """Our decoded media -> what HF processors take (a clip's waveform without its rate)."""
    if isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[1], int):
        return decoded[0]
    frames = getattr(decoded, "frames", None)
    return frames if frames is not None else decoded


def _accepted(method: Any, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The processor outputs the feature function names (others, like image_sizes for a model
    that does not take them, stay out)."""
    parameters = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(tensors)
    return {k: v for k, v in tensors.items() if k in parameters}


def _flatten(output: Any) -> torch.Tensor:
    """Whatever a feature function returns -> [num_tokens, hidden] for one item."""
    features = getattr(output, "pooler_output", None)
    if features is None and isinstance(output, tuple | list) and not torch.is_tensor(output):
        features = output
    if features is None:
        features = output.last_hidden_state if hasattr(output, "last_hidden_state") else output
    if isinstance(features, tuple | list):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    return features.reshape(-1, features.shape[-1])
