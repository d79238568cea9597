"""Mamba2 mixers (Zamba2) on the engine's state cache; see `lm_service.models.mamba`.

Mamba2 differs from Mamba in its state: per head a `[head_dim, state_size]` matrix with a
scalar decay (A is one number per head), B and C shared by groups of heads, and a gated RMS
norm before the output projection. The scan here is the plain recurrence, token by token,
which equals HF's chunked scan up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lm_service.models.state_step import STATE_INDEX_ATTR, StateStep, causal_conv1d


def mamba2_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    ssm_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba2 recurrence from `ssm_state`.

    Args:
        x: [Bt, L, H, P] float32; dt: [Bt, L, H] (after softplus and clamp); A: [H] negative.
        B, C: [Bt, L, H, N] (groups already repeated to heads), float32.
        ssm_state: [Bt, H, P, N] float32.

    Returns:
        (y [Bt, L, H, P] without the D skip, the final state [Bt, H, P, N]).
    """
    decay = torch.exp(dt * A)  # [Bt, L, H]
    state = ssm_state.float()
    outputs = []
    for t in range(x.shape[1]):
        update = (dt[:, t, :, None, None] * B[:, t, :, None, :]) * x[:, t, :, :, None]
        state = state * decay[:, t, :, None, None] + update  # [Bt, H, P, N]
        outputs.append(torch.matmul(state, C[:, t, :, :, None])[..., 0])  # [Bt, H, P]
    return torch.stack(outputs, dim=1), state


def mamba2_mixer_forward(module: nn.Module, hidden: torch.Tensor, step: StateStep) -> torch.Tensor:
    """HF `Zamba2MambaMixer` on the engine's state: hidden [T, hidden] -> [T, hidden]."""
    layer = getattr(module, STATE_INDEX_ATTR)
    conv_states, ssm_states = step.conv_states[layer], step.ssm_states[layer]
    gate, xbc, dt = module.in_proj(hidden).split(
        [module.intermediate_size, module.conv_dim, module.num_heads], dim=-1
    )
    out = torch.empty_like(gate)  # [T, inner]
    for slots, rows in step.groups:
        y, conv_new = causal_conv1d(
            xbc[rows], conv_states[slots], module.conv1d.weight[:, 0], module.conv1d.bias
        )
        conv_states[slots] = conv_new.to(conv_states.dtype)
        scanned, ssm_new = _mamba2_ssm(module, module.act(y), dt[rows], ssm_states[slots])
        ssm_states[slots] = ssm_new.to(ssm_states.dtype)
        out[rows] = module.norm(scanned.to(gate.dtype), gate[rows]).to(out.dtype)
    return module.out_proj(out)


def _mamba2_ssm(
    module: nn.Module, xbc: torch.Tensor, dt: torch.Tensor, ssm_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """xbc [Bt, L, conv_dim] after the conv, dt [Bt, L, H] raw -> (y [Bt, L, inner], state)."""
    batch, length = xbc.shape[:2]
    heads, head_dim, groups = module.num_heads, module.head_dim, module.n_groups
    size = module.ssm_state_size
    x, B, C = torch.split(xbc, [module.intermediate_size, groups * size, groups * size], dim=-1)
    x = x.reshape(batch, length, heads, head_dim).float()
    B = B.reshape(batch, length, groups, size).float().repeat_interleave(heads // groups, dim=2)
    C = C.reshape(batch, length, groups, size).float().repeat_interleave(heads // groups, dim=2)
    low, high = module.time_step_limit
    # NOTE: HF clamps dt in its chunked (prefill) scan only; we clamp at every token, which
    # differs only where softplus(dt) < time_step_min (1e-3 by default)
    dt = torch.clamp(F.softplus(dt.float() + module.dt_bias.float()), min=low, max=high)
    A = -torch.exp(module.A_log.float())  # [H]
    y, state = mamba2_scan(x, dt, A, B, C, ssm_state)
    y = y + x * module.D.float()[:, None]
    return y.reshape(batch, length, heads * head_dim), state


def mamba2_state_shapes(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv_shape, ssm_shape) of one slot of a Mamba2 mixer."""
    kernel = module.conv1d.weight.shape[-1]
    conv_shape = (module.conv_dim, kernel - 1)
    return conv_shape, (module.num_heads, module.head_dim, module.ssm_state_size)
