"""Finding a checkpoint, reading its config and streaming its weights.

A model is a local folder or a hub id, resolved by `protos.model_source` (the Hugging Face hub,
or ModelScope with `MESHSERVE_USE_MODELSCOPE=True`; both honour `HF_HUB_OFFLINE`). Weights stream one tensor at a time from safetensors (sharded or not), with
`.bin` files as the fallback. Multimodal checkpoints hold the language model next to vision or
audio towers; `language_model_weights` keeps only the former (its names found from the model
class, `language_model.py`), filtering by name BEFORE a tensor is read, and renames it to the
text model's names (`model.*`, `lm_head.*`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lm_service.models.language_model import LanguageModelNames, language_model_names
from protos.errors import InvalidRequest
from protos.model_source import CONFIG_PATTERNS, resolve_model

WeightFilter = Callable[[str], bool]

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


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


def language_model_weights(
    model_path: Path, names: LanguageModelNames
) -> Iterator[tuple[str, torch.Tensor]]:
    """The language-model weights of a multimodal checkpoint under the text model's names
    (`model.*`, `lm_head.*`); tower and projector tensors are never read. Which names are the
    language model's is found from the checkpoint's class (`language_model_names`)."""
    wanted = lambda name: names.text_name(name) is not None  # noqa: E731
    for name, tensor in iterate_weights(model_path, wanted=wanted):
        yield names.text_name(name), tensor  # type: ignore[misc]


def model_weights(model_path: Path, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of the language model under text-model names, for any checkpoint."""
    if is_multimodal(config):
        return language_model_weights(model_path, language_model_names(config))
    return iterate_weights(model_path)
