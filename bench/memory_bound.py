"""What a decode step must read at least: the weights, and the KV cache bytes of each token."""

from __future__ import annotations

import time

import torch

from lm_service.engine.cache_memory import CacheMemory


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


def kv_memory_line(report: CacheMemory) -> str:
    """--kv-cache-memory honoured? The engine's allocation against it, and the device's growth
    (RSS on CPU, CUDA max_memory_allocated) against the allocation; both 1.0 within 5%."""
    growth = "not measurable here"
    if report.measured is not None:
        growth = f"{report.measured / 2**20:.1f} MiB, ratio {report.measured_ratio:.3f}"
    capped = "  (capped: max_num_seqs x max_model_len use no more)" if report.is_capped else ""
    return (
        f"{report.kv_bytes_per_token} bytes per token, {report.num_blocks} blocks; budget "
        f"{report.budget / 2**20:.1f} MiB, allocated {report.allocated / 2**20:.1f} MiB "
        f"(ratio {report.allocated_share:.3f}); measured growth {growth}{capped}"
    )


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
