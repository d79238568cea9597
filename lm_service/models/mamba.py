"""Mamba layers on the engine's state cache: the torch reference scan, run per request.

HF's Mamba mixers (Mamba, FalconMamba, Jamba; Mamba2 in `mamba2`) keep their state in a
per-sequence HF cache and would run the flattened step as ONE sequence, leaking state from one
request into the next. `install_state_mixers` replaces each mixer's forward with ours: the same
weights (the HF module's own parameters), but each request's tokens run from the state in its
slot of the engine's state cache (`ForwardContext.state`, a `StateStep`) and leave the state
after its last token there. A prefill chunk continues from the state the previous chunk left,
so chunked prefill is exact; a slot is zeroed when its request starts (or restarts after
preemption), so requests never see each other's state.

Requests of equal query length run together (every decode step is one batched call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels.forward_context import get_forward_context, has_forward_context
from lm_service.models.base import StateCacheSpec
from lm_service.models.state_step import STATE_INDEX_ATTR, StateStep, causal_conv1d
from protos.errors import Unsupported

# ----------------------------------------------------------------------------- reference ops


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    ssm_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan from `ssm_state`, one token at a time (HF's torch reference).

    Args:
        x: [B, L, D] inputs; dt: [B, L, D] step sizes (after softplus), float32.
        A: [D, N] float32 (negative); B, C: [B, L, N].
        ssm_state: [B, D, N] float32, the state before the first token.

    Returns:
        (y [B, L, D] in x's dtype, without the D skip, the final state [B, D, N] float32).
    """
    discrete_A = torch.exp(A[None, None] * dt[..., None])  # [B, L, D, N]
    delta_B_u = dt[..., None] * B[:, :, None, :].float() * x[..., None].float()  # [B, L, D, N]
    state = ssm_state.float()
    outputs = []
    for t in range(x.shape[1]):
        state = discrete_A[:, t] * state + delta_B_u[:, t]
        outputs.append(torch.matmul(state.to(x.dtype), C[:, t, :, None].to(x.dtype))[..., 0])
    return torch.stack(outputs, dim=1), state


# ----------------------------------------------------------------------------- Mamba (v1) mixer


def mamba_mixer_forward(module: nn.Module, hidden: torch.Tensor, step: StateStep) -> torch.Tensor:
    """HF `MambaMixer` / `FalconMambaMixer` / `JambaMambaMixer` on the engine's state.

    Args:
        hidden: [T, hidden] the step's tokens, requests end to end.

    Returns:
        [T, hidden].
    """
    layer = getattr(module, STATE_INDEX_ATTR)
    conv_states, ssm_states = step.conv_states[layer], step.ssm_states[layer]
    x, gate = module.in_proj(hidden).chunk(2, dim=-1)  # [T, inner] each
    out = torch.empty_like(x)
    for slots, rows in step.groups:
        y, conv_new = causal_conv1d(
            x[rows], conv_states[slots], module.conv1d.weight[:, 0], module.conv1d.bias
        )
        conv_states[slots] = conv_new.to(conv_states.dtype)
        y = module.act(y)  # [B, L, inner]
        scanned, ssm_new = _mamba_ssm(module, y, ssm_states[slots])
        ssm_states[slots] = ssm_new.to(ssm_states.dtype)
        out[rows] = (scanned * F.silu(gate[rows].float())).to(out.dtype)
    return module.out_proj(out)


def _mamba_ssm(
    module: nn.Module, x: torch.Tensor, ssm_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, inner] after the conv -> (y [B, L, inner] float32 with the D skip, new state)."""
    rank, size = module.time_step_rank, module.ssm_state_size
    time_step, B, C = torch.split(module.x_proj(x), [rank, size, size], dim=-1)
    if hasattr(module, "dt_layernorm"):  # FalconMamba and Jamba normalize dt, B and C
        time_step = module.dt_layernorm(time_step)
        B, C = module.b_layernorm(B), module.c_layernorm(C)
    dt = F.softplus(
        torch.matmul(time_step, module.dt_proj.weight.t()) + module.dt_proj.bias.float()
    )  # [B, L, inner]
    A = -torch.exp(module.A_log.float())  # [inner, N]
    y, state = selective_scan(x, dt, A, B, C, ssm_state)
    return y + x * module.D.float(), state


def mamba_state_shapes(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv_shape, ssm_shape) of one slot of a v1 mixer."""
    inner, kernel = module.conv1d.weight.shape[0], module.conv1d.weight.shape[-1]
    return (inner, kernel - 1), (inner, module.ssm_state_size)


# ----------------------------------------------------------------------------- installing


def _mixer_kind(module: nn.Module) -> str | None:
    """'mamba' (v1), 'mamba2' or None, read off the module's parameters."""
    if not (hasattr(module, "A_log") and hasattr(module, "conv1d") and hasattr(module, "in_proj")):
        return None
    if hasattr(module, "x_proj") and hasattr(module, "dt_proj"):
        return "mamba"
    if hasattr(module, "dt_bias") and hasattr(module, "n_groups"):
        return "mamba2"
    raise Unsupported(f"{type(module).__name__} is a state-space mixer meshserve does not know")


def install_state_mixers(model: nn.Module, dtype: torch.dtype) -> StateCacheSpec | None:
    """Makes every Mamba mixer of `model` run on the engine's state cache.

    Returns:
        the state one request needs, or None when the model has no Mamba layer.
    """
    mixers = [(m, k) for m in model.modules() if (k := _mixer_kind(m)) is not None]
    if not mixers:
        return None
    shapes = set()
    for index, (module, kind) in enumerate(mixers):
        setattr(module, STATE_INDEX_ATTR, index)
        run, shape = _runner(kind, module)
        module.forward = _state_forward(module, run)
        shapes.add(shape)
    if len(shapes) != 1:
        raise Unsupported(f"Mamba layers with different state shapes are not supported: {shapes}")
    conv_shape, ssm_shape = shapes.pop()
    return StateCacheSpec(len(mixers), conv_shape, ssm_shape, conv_dtype=dtype)


def _runner(kind: str, module: nn.Module) -> tuple[Callable[..., torch.Tensor], Any]:
    if kind == "mamba":
        return mamba_mixer_forward, mamba_state_shapes(module)
    from lm_service.models.mamba2 import mamba2_mixer_forward, mamba2_state_shapes

    return mamba2_mixer_forward, mamba2_state_shapes(module)


def _state_forward(module: nn.Module, run: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    """The mixer's new forward: HF's signature, [1, T, hidden] in and out."""

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not has_forward_context():  # probing the model's layers: no state, no output
            return torch.zeros_like(hidden_states)
        step = get_forward_context().state
        if step is None:
            raise RuntimeError("a Mamba layer ran without the engine's state cache")
        return run(module, hidden_states[0], step)[None]

    return forward
