"""The state-space reference ops continue exactly from a saved state (what makes chunked
prefill and decode on the state cache equal one pass over the whole sequence)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lm_service.models.mamba import selective_scan
from lm_service.models.mamba2 import mamba2_scan
from lm_service.models.state_step import StateStep, causal_conv1d

GEN = torch.Generator().manual_seed(0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def test_causal_conv_continues_from_its_state() -> None:
    channels, kernel, length = 6, 4, 10
    x, weight, bias = _randn(2, length, channels), _randn(channels, kernel), _randn(channels)
    zeros = torch.zeros(2, channels, kernel - 1)
    whole, _ = causal_conv1d(x, zeros, weight, bias)
    reference = F.conv1d(
        x.transpose(1, 2), weight[:, None], bias, padding=kernel - 1, groups=channels
    )
    torch.testing.assert_close(whole, reference[..., :length].transpose(1, 2))
    head, state = causal_conv1d(x[:, :3], zeros, weight, bias)
    tail, _ = causal_conv1d(x[:, 3:], state, weight, bias)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole)


def test_selective_scan_continues_from_its_state() -> None:
    batch, length, inner, size = 2, 9, 5, 3
    x, dt = _randn(batch, length, inner), F.softplus(_randn(batch, length, inner))
    A = -torch.rand(inner, size, generator=GEN)
    B, C = _randn(batch, length, size), _randn(batch, length, size)
    zeros = torch.zeros(batch, inner, size)
    whole, final = selective_scan(x, dt, A, B, C, zeros)
    head, state = selective_scan(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], zeros)
    tail, end = selective_scan(x[:, 4:], dt[:, 4:], A, B[:, 4:], C[:, 4:], state)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole)
    torch.testing.assert_close(end, final)


def test_mamba2_scan_continues_from_its_state() -> None:
    batch, length, heads, head_dim, size = 2, 7, 4, 3, 5
    x, dt = _randn(batch, length, heads, head_dim), F.softplus(_randn(batch, length, heads))
    A = -torch.rand(heads, generator=GEN)
    B, C = _randn(batch, length, heads, size), _randn(batch, length, heads, size)
    zeros = torch.zeros(batch, heads, head_dim, size)
    whole, final = mamba2_scan(x, dt, A, B, C, zeros)
    head, state = mamba2_scan(x[:, :2], dt[:, :2], A, B[:, :2], C[:, :2], zeros)
    tail, end = mamba2_scan(x[:, 2:], dt[:, 2:], A, B[:, 2:], C[:, 2:], state)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole)
    torch.testing.assert_close(end, final)


def test_requests_of_equal_length_run_as_one_group() -> None:
    step = StateStep.build([], [], [5, 2, 7, 0], [3, 1, 1, 3], torch.device("cpu"))
    groups = {tuple(rows.shape): (slots.tolist(), rows.tolist()) for slots, rows in step.groups}
    assert groups == {
        (2, 3): ([5, 0], [[0, 1, 2], [5, 6, 7]]),
        (2, 1): ([2, 7], [[3], [4]]),
    }
