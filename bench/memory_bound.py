"""What a decode step must read at least: the weights, and the KV cache bytes of each token."""

from __future__ import annotations

import time

import torch


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, each counted once (tied weights share storage).

    NOTE: a decode step reads all of them (the LM head reads the tied embedding matrix);
    the embedding lookup reads one row only, so this is the bound's byte count.
    """
    seen: set[int] = set()
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def kv_bytes_per_token(kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """K and V bytes one token takes over all layers; caches are [blocks, block_size, ...]."""
    total = 0
    for k_cache, v_cache in kv_caches:
        for cache in (k_cache, v_cache):
            slots = cache.shape[0] * cache.shape[1]
            total += cache.numel() * cache.element_size() // slots
    return total


def copy_bandwidth(device: torch.device | str = "cpu", num_bytes: int = 256 << 20) -> float:
    """Bytes per second a large device copy moves (read + write counted), best of 5."""
    src = torch.ones(num_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
