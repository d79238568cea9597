"""Where a model id comes from: a local folder, the Hugging Face hub or ModelScope.

Every service resolves `--model` here before it reads a config, tokenizer, processor or
weights, so the LM, the encoders and the gateway always read the same snapshot.

- a local folder is used as it is;
- with `MESHSERVE_USE_MODELSCOPE=True` (or vLLM's `VLLM_USE_MODELSCOPE=True`) an id is a
  ModelScope id, fetched with `modelscope.snapshot_download` into ModelScope's cache
  (`MODELSCOPE_CACHE`, default `~/.cache/modelscope`), `revision` included;
- otherwise an id is a Hugging Face hub id, fetched with `huggingface_hub.snapshot_download`.

Offline (`HF_HUB_OFFLINE=1`, which `make test` sets) either hub answers from its local cache
only and a model it has not cached is an error naming the cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from protos.errors import InvalidRequest
from protos.flags import flag

USE_MODELSCOPE_VARS = ("MESHSERVE_USE_MODELSCOPE", "VLLM_USE_MODELSCOPE")
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
# What every service reads besides weights: configs, tokenizers, processors, remote code.
CONFIG_PATTERNS: tuple[str, ...] = ("*.json", "*.py", "*.txt", "*.model", "*.jinja", "*.tiktoken")
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt")
ALL_PATTERNS: tuple[str, ...] = CONFIG_PATTERNS + WEIGHT_PATTERNS
# Every service that loads the model takes it, so `meshserve up --revision` reaches them all.
REVISION_FLAG = flag(
    "--revision",
    default=None,
    help="model revision (branch, tag or commit) on the Hugging Face hub or ModelScope",
)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_VALUES


def use_modelscope() -> bool:
    """True when model ids name ModelScope models (either environment variable says so)."""
    return any(_env_true(name) for name in USE_MODELSCOPE_VARS)


def is_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE")


def hub_name() -> str:
    return "ModelScope" if use_modelscope() else "the Hugging Face hub"


def resolve_model(
    model: str,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """A local folder holding `model`: the folder itself, or a snapshot of the hub it names.

    Args:
        model: a local folder or a hub id (`owner/name`).
        revision: branch, tag or commit of a hub model (ignored for a folder).
        allow_patterns: the files to fetch (globs); None fetches the whole snapshot.

    Raises:
        InvalidRequest: not a folder, and the hub (or, offline, its cache) does not have it.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    patterns = list(allow_patterns) if allow_patterns is not None else None
    try:
        if use_modelscope():
            return Path(_modelscope_snapshot(model, revision, patterns))
        return Path(_hf_snapshot(model, revision, patterns))
    except InvalidRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - every hub failure means the same to the user
        where = f"the local cache of {hub_name()} (offline)" if is_offline() else hub_name()
        raise InvalidRequest(
            f"Model {model!r} is not a local folder and could not be found in {where}: {exc}"
        ) from exc


def _hf_snapshot(model: str, revision: str | None, patterns: list[str] | None) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(
        model, revision=revision, allow_patterns=patterns, local_files_only=is_offline()
    )


def _modelscope_snapshot(model: str, revision: str | None, patterns: list[str] | None) -> str:
    try:
        from modelscope import snapshot_download
    except ModuleNotFoundError as exc:
        raise InvalidRequest(
            f"{'/'.join(v for v in USE_MODELSCOPE_VARS if _env_true(v))} is set, so {model!r} "
            "is a ModelScope id, but the modelscope package is not installed: "
            "`pip install modelscope`"
        ) from exc
    # NOTE: modelscope reads MODELSCOPE_CACHE once, at import; pass it on every call
    return snapshot_download(
        model,
        revision=revision,
        cache_dir=os.environ.get("MODELSCOPE_CACHE") or None,
        allow_patterns=patterns,
        local_files_only=is_offline(),
    )
