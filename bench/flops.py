"""How close a run comes to the machine's GEMM: the linears' FLOPs against a measured ceiling."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def linear_flops(model: torch.nn.Module, num_tokens: int, num_sampled: int) -> float:
    """FLOPs of every decoder linear over `num_tokens` rows plus the LM head over
    `num_sampled` rows (attention's score/value products not counted).

    `model`: a native Llama-family model (`model.model.layers`, `args.vocab_size`).
    """
    layer_params = sum(
        m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)
    )
    head_params = model.args.vocab_size * model.args.hidden_size
    return 2.0 * (layer_params * num_tokens + head_params * num_sampled)


def gemm_ceiling(
    hidden: int, intermediate: int, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> float:
    """FLOP/s of `F.linear` on a prefill-sized [1024, hidden] x [2 * intermediate, hidden]^T
    (the gate/up shape), best of 3: what this machine's GEMM reaches on large matrices."""
    x = torch.randn(1024, hidden, device=device).to(dtype)
    w = torch.randn(2 * intermediate, hidden, device=device).to(dtype)
    F.linear(x, w)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        F.linear(x, w)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * x.shape[0] * w.shape[0] * hidden / best
