"""Finding a checkpoint, reading its config and streaming its weights.

A model is a local folder or a hub id, resolved by `protos.model_source` (the Hugging Face hub,
or ModelScope with `MESHSERVE_USE_MODELSCOPE=True`; both honour `HF_HUB_OFFLINE`). Weights stream one tensor at a time from safetensors (sharded or not), with
`.bin` files as the fallback. Multimodal checkpoints hold the language model next to vision or
audio towers; `language_model_weights` keeps only the former, filtering by name BEFORE a
tensor is read, and renames it to the text model's names (`model.*`, `lm_head.*`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from protos.errors import InvalidRequest
from protos.model_source import CONFIG_PATTERNS, resolve_model

WeightFilter = Callable[[str], bool]

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

# Prefixes of the language model inside multimodal checkpoints, and the text model's name for
# them. transformers 5 nests it as `model.language_model.*` (+ top-level `lm_head.*`); older
# checkpoints (and v5's own save format for LLaVA / Qwen2-Audio) use `language_model.model.*`.
LANGUAGE_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", "model."),
)
# Top-level names (after any `model.`) of towers and projectors; never read by the LM.
NON_LANGUAGE_MODULES = frozenset(
    {
        "visual",
        "vision_tower",
        "vision_model",
        "vision_embed_tokens",
        "audio_tower",
        "audio_model",
        "multi_modal_projector",
        "mm_projector",
        "image_newline",
    }
)


def resolve_model_path(model: str, *, revision: str | None = None) -> Path:
    """A local checkpoint folder for `model`: the folder itself, or a hub snapshot of its
    configs and safetensors weights (`.bin` / `.pt` when it has no safetensors).

    Raises:
        InvalidRequest: not a folder and not a model the hub (or, offline, its cache) has.
    """
    snapshot = resolve_model(
        model, revision=revision, allow_patterns=[*CONFIG_PATTERNS, "*.safetensors"]
    )
    if not _weight_files_in(snapshot):
        snapshot = resolve_model(
            model, revision=revision, allow_patterns=[*CONFIG_PATTERNS, "*.bin", "*.pt"]
        )
    return snapshot


def load_config(
    model_path: Path,
    *,
    trust_remote_code: bool = False,
    hf_overrides: Mapping[str, Any] | Callable[[Any], Any] | None = None,
    revision: str | None = None,
) -> Any:
    """AutoConfig of the checkpoint with `hf_overrides` applied on top (as vLLM does).

    `hf_overrides` is a dict (nested dicts update sub-configs such as `text_config`) or a
    function taking and returning the config.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            str(model_path), trust_remote_code=trust_remote_code, revision=revision
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise InvalidRequest(
                f"{model_path} needs custom code from the hub; pass trust_remote_code=True "
                "if you trust it"
            ) from exc
        raise InvalidRequest(f"Cannot read the config of {model_path}: {exc}") from exc
    return apply_hf_overrides(config, hf_overrides)


def apply_hf_overrides(
    config: Any, overrides: Mapping[str, Any] | Callable[[Any], Any] | None
) -> Any:
    """Sets each key of `overrides` on `config`; a dict value updates a sub-config."""
    if overrides is None:
        return config
    if callable(overrides):
        return overrides(config)
    for key, value in overrides.items():
        current = getattr(config, key, None)
        if isinstance(value, Mapping) and hasattr(current, "to_dict"):
            apply_hf_overrides(current, value)
        elif isinstance(value, Mapping) and isinstance(current, Mapping):
            setattr(config, key, {**current, **value})
        else:
            setattr(config, key, value)
    return config


def text_config_of(config: Any) -> Any:
    """The language model's config: `config.text_config` of multimodal models, else `config`."""
    return config.get_text_config()


def is_multimodal(config: Any) -> bool:
    return text_config_of(config) is not config


# ----------------------------------------------------------------------------- weight files


def _weight_files_in(model_path: Path) -> list[Path]:
    for index_name, pattern in ((SAFETENSORS_INDEX, "*.safetensors"), (BIN_INDEX, "*.bin")):
        index = model_path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [model_path / shard for shard in shards]
        files = sorted(model_path.glob(pattern))
        files = [f for f in files if not f.name.startswith(("training_args", "optimizer"))]
        if files:
            return files
    return sorted(model_path.glob("*.pt"))


def weight_files(model_path: Path) -> list[Path]:
    """The checkpoint's weight shards: safetensors when present, else `.bin` / `.pt`."""
    files = _weight_files_in(model_path)
    if not files:
        raise InvalidRequest(f"No weights (*.safetensors or *.bin) found in {model_path}")
    return files


def iterate_weights(
    model_path: Path, *, wanted: WeightFilter | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) for every weight whose name passes `wanted`, one at a time.

    NOTE: names are filtered before their tensor is read, so skipped weights cost no I/O
    (safetensors) or only the mapped pages of the pickle (`.bin`, loaded with mmap).
    """
    files = weight_files(model_path)
    for path in tqdm(files, desc="Loading weights", unit="shard", disable=None):
        if path.suffix == ".safetensors":
            yield from _safetensors_tensors(path, wanted)
        else:
            yield from _pickle_tensors(path, wanted)


def _safetensors_tensors(path: Path, wanted: WeightFilter | None) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            if wanted is None or wanted(name):
                yield name, handle.get_tensor(name)


def _pickle_tensors(path: Path, wanted: WeightFilter | None) -> Iterator[tuple[str, Any]]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (pre-zip) pickles cannot be memory-mapped
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for name, tensor in state.items():
        if wanted is None or wanted(name):
            yield name, tensor
    del state


# ----------------------------------------------------------------------------- LM of multimodal


def language_model_weight_name(name: str) -> str | None:
    """The text model's name for checkpoint weight `name`, or None when it is not part of the
    language model (vision / audio towers, projectors).

    `model.language_model.X` and `language_model.model.X` -> `model.X`;
    `language_model.lm_head.X` -> `lm_head.X`; `model.X` and `lm_head.X` stay as they are
    (Qwen2-VL's hub layout puts the LM there next to `visual.*`).
    """
    for prefix, replacement in LANGUAGE_MODEL_PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    head, _, rest = name.partition(".")
    top = rest.partition(".")[0] if head == "model" else head
    if head in NON_LANGUAGE_MODULES or top in NON_LANGUAGE_MODULES:
        return None
    if head in ("model", "lm_head"):
        return name
    return None


def language_model_weights(model_path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The language-model weights of a multimodal checkpoint under the text model's names;
    tower and projector tensors are never read."""
    wanted = lambda name: language_model_weight_name(name) is not None  # noqa: E731
    for name, tensor in iterate_weights(model_path, wanted=wanted):
        yield language_model_weight_name(name), tensor  # type: ignore[misc]


def model_weights(model_path: Path, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of the language model under text-model names, for any checkpoint."""
    if is_multimodal(config):
        return language_model_weights(model_path)
    return iterate_weights(model_path)
