"""The packed CPU linear path against F.linear, and that it really runs from the packed copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.packed_linear import (
    MIN_PACKED_FP32_ROWS,
    PackedHead,
    PackedLinear,
    can_pack,
    cpu_linear,
    pack_linears,
    pack_weight,
)

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)
IN, OUT = 96, 200
ROWS = [1, 3, 64, 700]  # one row, a decode batch, the layout hint, a prefill chunk


def _linear(dtype: torch.dtype, bias: bool) -> PackedLinear:
    torch.manual_seed(0)
    layer = PackedLinear(IN, OUT, bias=bias, dtype=dtype)
    with torch.no_grad():
        layer.weight.normal_(0, 0.1)
        if bias:
            layer.bias.normal_(0, 0.1)
    return layer


def _input(rows: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(rows, IN, generator=torch.Generator().manual_seed(rows)).to(dtype)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_is_bit_identical_to_f_linear(rows, bias):
    layer = _linear(torch.bfloat16, bias)
    assert layer.pack()
    x = _input(rows, torch.bfloat16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)


def test_runs_from_the_packed_copy():
    layer = _linear(torch.bfloat16, bias=True)
    layer.pack()
    x = _input(3, torch.bfloat16)
    expected = F.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        layer.weight.zero_()  # a layer still reading the plain weight now outputs its bias
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("rows", [MIN_PACKED_FP32_ROWS, 7, 64, 130])  # fewer: F.linear itself
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_packs_and_matches_f_linear_to_rounding(rows, bias):
    """fp32 packs too (layers and heads); oneDNN sums in another order than MKL, so outputs
    match F.linear to fp32 rounding of an IN-term dot product, not bit for bit."""
    layer = _linear(torch.float32, bias)
    assert layer.pack() and layer.packed_weight is not None
    shared = PackedHead(layer.weight)
    assert shared.packed_weight is not None
    x = _input(rows, torch.float32)
    with torch.no_grad():
        outputs = {"layer": (layer(x), layer.bias), "head": (shared(x), None)}
        for out, bias_term in outputs.values():
            assert out.dtype == torch.float32
            expected = F.linear(x, layer.weight, bias_term)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_fp32_runs_from_the_packed_copy_from_4_rows_on():
    """Below MIN_PACKED_FP32_ROWS rows MKL's F.linear reads the plain weight, and is faster."""
    layer = _linear(torch.float32, bias=False)
    layer.pack()
    few = _input(MIN_PACKED_FP32_ROWS - 1, torch.float32)
    many = _input(MIN_PACKED_FP32_ROWS, torch.float32)
    expected = F.linear(many, layer.weight)
    with torch.no_grad():
        layer.weight.zero_()  # what still reads the plain weight now outputs zeros
        torch.testing.assert_close(layer(many), expected, rtol=1e-5, atol=1e-5)
        assert not layer(few).any()


def test_unpacked_layer_and_empty_batch_are_f_linear():
    layer = _linear(torch.bfloat16, bias=True)
    x = _input(5, torch.bfloat16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    layer.pack()
    assert layer(x[:0]).shape == (0, OUT)


def test_what_cannot_be_packed_stays_on_f_linear():
    assert not can_pack(torch.empty(4, 4, dtype=torch.float16))
    assert not can_pack(torch.empty(4, 4, dtype=torch.bfloat16, device="meta"))
    assert can_pack(torch.empty(4, 4, dtype=torch.bfloat16))
    half = PackedLinear(IN, OUT, bias=False, dtype=torch.float16)
    assert not half.pack() and half.packed_weight is None
    assert cpu_linear(torch.ones(2, IN), torch.ones(OUT, IN), None, None).shape == (2, OUT)


def test_head_packs_a_shared_weight_and_pack_linears_counts():
    embed = torch.nn.Embedding(OUT, IN).to(torch.bfloat16)
    head = PackedHead(embed.weight)
    assert head.packed_weight is not None
    x = _input(4, torch.bfloat16)
    torch.testing.assert_close(head(x), F.linear(x, embed.weight), rtol=0, atol=0)
    model = torch.nn.Sequential(
        _linear(torch.bfloat16, True),
        _linear(torch.float32, False),
        PackedLinear(IN, OUT, bias=False, dtype=torch.float16),
    )
    assert pack_linears(model) == 2  # the float16 one stays on F.linear
    assert pack_weight(model[0].weight).is_mkldnn
