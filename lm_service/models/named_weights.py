"""Filling a meta-built model whose parameters carry the checkpoint's own names (after a
renaming), strictly: an unknown weight, a wrong shape or a parameter left unfilled is an error.
The encoder-decoder models use it (Whisper, BART)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from protos.errors import InvalidRequest


def materialize(module: nn.Module, device: torch.device) -> None:
    """Replaces every meta parameter with an uninitialized one on `device`."""
    for submodule in module.modules():
        for key, param in list(submodule._parameters.items()):
            if param is not None and param.is_meta:
                real = torch.empty(param.shape, dtype=param.dtype, device=device)
                submodule._parameters[key] = nn.Parameter(real, requires_grad=False)


def load_named_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    target: Callable[[str], str | None],
    device: torch.device,
    family: str,
) -> set[str]:
    """Materializes `model` on `device` and copies each weight into `target(name)` (None:
    a weight this model does not read). Returns the parameters filled.

    Raises:
        InvalidRequest: a weight the model does not have, a shape mismatch, or a parameter
            the checkpoint lacks.
    """
    materialize(model, device)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        dest = target(name)
        if dest is None:
            continue
        param = params.get(dest)
        if param is None:
            raise InvalidRequest(f"unexpected weight {name!r} for a {family} model")
        if param.shape != tensor.shape:
            raise InvalidRequest(
                f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}"
            )
        param.data.copy_(tensor)
        loaded.add(dest)
    missing = sorted(set(params) - loaded)
    if missing:
        raise InvalidRequest(f"checkpoint lacks weights for: {', '.join(missing[:8])}")
    return loaded
