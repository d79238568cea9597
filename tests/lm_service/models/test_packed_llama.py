"""A loaded native Llama-family model runs every linear, LM head included, from packed weights
that hold the checkpoint's values (packed after loading, not from the uninitialized tensors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gateway.tools.tiny_models import tiny_model_path
from kernels.packed_linear import MIN_PACKED_FP32_ROWS, PackedHead, PackedLinear
from lm_service.models.registry import load_model

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


def _load(name: str, dtype: str, **overrides: object) -> torch.nn.Module:
    loaded = load_model(str(tiny_model_path(name)), dtype=dtype, hf_overrides=overrides or None)
    assert loaded.impl_name == "native"
    return loaded.model


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_every_linear_runs_packed_from_the_loaded_weights(name):
    model = _load(name, "bfloat16")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, PackedLinear) for m in linears)
    assert model.lm_head in linears
    for layer in linears:
        assert layer.packed_weight is not None
        x = torch.randn(3, layer.in_features).to(torch.bfloat16)
        with torch.no_grad():
            plain = F.linear(x, layer.weight, layer.bias)
            packed = layer(x)
        torch.testing.assert_close(packed, plain, rtol=0, atol=0)


def test_fp32_model_packs_every_linear():
    model = _load("llama", "float32")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert model.lm_head in linears and all(isinstance(m, PackedLinear) for m in linears)
    for layer in linears:
        assert layer.packed_weight is not None
        x = torch.randn(MIN_PACKED_FP32_ROWS, layer.in_features)
        with torch.no_grad():
            expected = F.linear(x, layer.weight, layer.bias)
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    hidden = torch.randn(MIN_PACKED_FP32_ROWS, model.args.hidden_size)
    expected = F.linear(hidden, model.lm_head.weight)
    torch.testing.assert_close(model.compute_logits(hidden), expected, rtol=1e-5, atol=1e-5)


def test_tied_head_packs_the_embedding():
    model = _load("llama", "bfloat16", tie_word_embeddings=True)
    assert model.lm_head is None and isinstance(model.head, PackedHead)
    assert model.head.packed_weight is not None
    hidden = torch.randn(2, model.args.hidden_size).to(torch.bfloat16)
    logits = model.compute_logits(hidden)
    expected = F.linear(hidden, model.model.embed_tokens.weight).float()
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
