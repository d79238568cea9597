"""The bench's FLOP count: every decoder linear per token, the LM head per sampled row."""

from __future__ import annotations

import torch

from bench.flops import gemm_ceiling, linear_flops
from gateway.tools.tiny_models import tiny_model_path
from lm_service.models.registry import load_model


def test_linear_flops_counts_layers_per_token_and_the_head_per_sample():
    model = load_model(str(tiny_model_path("llama"))).model
    args = model.args
    kv = args.num_kv_heads * args.head_dim
    q = args.num_heads * args.head_dim
    per_layer = args.hidden_size * (q + 2 * kv) + q * args.hidden_size
    per_layer += 3 * args.hidden_size * args.intermediate_size
    head = args.vocab_size * args.hidden_size
    expected = 2 * (args.num_layers * per_layer * 10 + head * 3)
    assert linear_flops(model, num_tokens=10, num_sampled=3) == expected


def test_gemm_ceiling_is_a_rate():
    assert gemm_ceiling(32, 48, torch.float32) > 1e6  # FLOP/s: anything alive does 1 MFLOP/s
