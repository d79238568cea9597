"""rms_norm / fused_add_rms_norm vs HF's RMSNorm modules; silu_and_mul vs HF's MLP gate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from kernels.activation import gelu_tanh_and_mul, silu_and_mul
from kernels.norms import fused_add_rms_norm, rms_norm

HIDDEN = 48
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_weight(norm: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    with torch.no_grad():
        norm.weight.copy_(torch.randn(HIDDEN))
    return norm.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_llama_rms_norm(dtype):
    torch.manual_seed(0)
    hf = random_weight(LlamaRMSNorm(HIDDEN, eps=1e-5), dtype)
    x = (torch.randn(7, 3, HIDDEN) * 5).to(dtype)
    got = rms_norm(x, hf.weight, 1e-5)
    assert got.dtype == dtype
    torch.testing.assert_close(got, hf(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_gemma2_rms_norm_with_offset(dtype):
    torch.manual_seed(1)
    hf = random_weight(Gemma2RMSNorm(HIDDEN, eps=1e-6), dtype)
    x = (torch.randn(5, HIDDEN) * 3).to(dtype)
    got = rms_norm(x, hf.weight, 1e-6, offset=1.0)
    assert got.dtype == dtype
    torch.testing.assert_close(got, hf(x), rtol=0, atol=0)


def test_eps_matters_for_tiny_inputs():
    x = torch.full((1, HIDDEN), 1e-4)
    weight = torch.ones(HIDDEN)
    assert rms_norm(x, weight, 0.0).mean().item() == pytest.approx(1.0)
    assert rms_norm(x, weight, 1e-2).mean().item() < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_fused_add_rms_norm(dtype, offset):
    torch.manual_seed(2)
    x, residual = torch.randn(2, 6, HIDDEN).to(dtype)
    weight = torch.randn(HIDDEN).to(dtype)
    normed, summed = fused_add_rms_norm(x, residual, weight, 1e-6, offset=offset)
    torch.testing.assert_close(summed, x + residual, rtol=0, atol=0)
    torch.testing.assert_close(normed, rms_norm(x + residual, weight, 1e-6, offset=offset))


def test_silu_and_mul_matches_gated_mlp():
    torch.manual_seed(3)
    gate, up = torch.randn(4, 5, 24), torch.randn(4, 5, 24)
    got = silu_and_mul(torch.cat([gate, up], dim=-1))
    assert got.shape == (4, 5, 24)
    torch.testing.assert_close(got, F.silu(gate) * up, rtol=1e-6, atol=1e-6)


def test_gelu_tanh_and_mul():
    torch.manual_seed(4)
    gate, up = torch.randn(3, 8), torch.randn(3, 8)
    got = gelu_tanh_and_mul(torch.cat([gate, up], dim=-1))
    torch.testing.assert_close(got, F.gelu(gate, approximate="tanh") * up, rtol=1e-6, atol=1e-6)
