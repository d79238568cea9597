"""Build a tower on the meta device and read only its own weights from the checkpoint.

A multimodal checkpoint holds the language model too (most of its bytes). We list the keys of
each safetensors file, keep those under the tower's roots, and only then read tensors, so the
language model's weights are never read. Key layouts handled, for a root such as
`vision_tower`:

- transformers 5: `model.vision_tower.*`
- transformers 4 / the hub: `vision_tower.*`, with CLIP/SigLIP towers nested one level deeper
  as `vision_tower.vision_model.*` (transformers 5 builds them without `vision_model`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

_LAYOUT_PREFIXES = ("model.", "")  # transformers 5 first, then the older hub layout
_NESTED_SEGMENTS = ("vision_model.",)  # hub CLIP/SigLIP nesting absent from transformers 5


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Runs `factory` with parameters and buffers created on the meta device (no memory).

    NOTE: `torch.device` as a context manager is a thread-local torch function mode, so a
    language model built at the same time in another thread is unaffected.
    """
    with torch.device("meta"):
        return factory()


def load_tower_weights(
    module: nn.Module,
    path: str | Path,
    roots: Sequence[str],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> int:
    """Fills the meta `module` (whose top-level children are `roots`) from the checkpoint.

    Returns the number of tensors read. Floating tensors are cast to `dtype`.
    Raises FileNotFoundError without safetensors files, RuntimeError when a weight is missing.
    """
    expected = set(module.state_dict().keys())
    state: dict[str, torch.Tensor] = {}
    for file, keys in _files_with_keys(Path(path), roots):
        wanted = {key: name for key in keys if (name := _module_key(key, roots, expected))}
        if wanted:
            state.update(_read(file, wanted, dtype, device))
    missing = sorted(expected - state.keys())
    if missing:
        raise RuntimeError(
            f"the checkpoint at {path} lacks {len(missing)} weight(s) of the encoder tower, "
            f"e.g. {missing[:3]}"
        )
    module.load_state_dict(state, strict=True, assign=True)
    materialize_buffers(module, device)
    return len(state)


def _files_with_keys(path: Path, roots: Sequence[str]) -> Iterator[tuple[Path, list[str]]]:
    """(file, its keys) for each safetensors file that may hold a tower weight."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        by_file: dict[str, list[str]] = {}
        for key, file in weight_map.items():
            if _under_roots(key, roots):
                by_file.setdefault(file, []).append(key)
        for file, keys in sorted(by_file.items()):
            yield path / file, keys
        return
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path} (other formats unsupported)")
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())  # reads the header only
        yield file, [key for key in keys if _under_roots(key, roots)]


def _under_roots(key: str, roots: Sequence[str]) -> bool:
    """Whether `key` is under one of `roots`, or is one (a parameter such as image_newline)."""
    return any(
        key.startswith(f"{prefix}{root}.") or key == f"{prefix}{root}"
        for prefix in _LAYOUT_PREFIXES
        for root in roots
    )


def _module_key(key: str, roots: Sequence[str], expected: set[str]) -> str | None:
    """The module's name for checkpoint `key`, or None when the key is not the tower's."""
    for prefix in _LAYOUT_PREFIXES:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in expected:
            return name
        for root in roots:
            for segment in _NESTED_SEGMENTS:
                nested = f"{root}.{segment}"
                if (
                    name.startswith(nested)
                    and (flat := f"{root}.{name[len(nested) :]}") in expected
                ):
                    return flat
    return None


def _read(
    file: Path, wanted: dict[str, str], dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    with safe_open(str(file), framework="pt", device="cpu") as handle:
        for key, name in wanted.items():
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[name] = tensor.to(device)
    return state


@torch.no_grad()
def materialize_buffers(module: nn.Module, device: torch.device) -> None:
    """Computes the non-persistent buffers (rotary inv_freq, position ids) left on meta.

    They are not in checkpoints; transformers fills them through each model's `_init_weights`
    after loading, and so do we. Loaded parameters are flagged as initialized so
    `_init_weights` leaves them alone; a sentinel proves each buffer really was filled.
    """
    from transformers import PreTrainedModel

    refilled: list[tuple[str, nn.Module, str]] = []
    for owner_name, owner in module.named_modules():
        for name, buffer in list(owner._buffers.items()):
            if buffer is not None and buffer.is_meta:
                owner._buffers[name] = torch.full_like(buffer, _sentinel(buffer), device=device)
                refilled.append((owner_name, owner, name))
    for parameter in module.parameters():
        parameter._is_hf_initialized = True
    for owner_name, owner, _ in refilled:
        _closest_pretrained(module, owner_name, PreTrainedModel)._init_weights(owner)
    for owner_name, owner, name in refilled:
        buffer = owner._buffers[name]
        if bool((buffer == _sentinel(buffer)).any()) or bool(buffer.isnan().any()):
            raise RuntimeError(f"cannot compute buffer {owner_name}.{name} of the encoder tower")


def _sentinel(buffer: torch.Tensor) -> float:
    return float("nan") if buffer.is_floating_point() else -1


def _closest_pretrained(root: nn.Module, name: str, pretrained_cls: type) -> nn.Module:
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        candidate = root.get_submodule(".".join(parts[:depth]))
        if isinstance(candidate, pretrained_cls):
            return candidate
    raise RuntimeError(f"no transformers model owns buffer module {name!r}")
