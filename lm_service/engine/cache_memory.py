"""What the engine's caches cost: the bytes allocated against `--kv-cache-memory`, and what the
device showed for them (resident memory on CPU, the CUDA allocator's peak on GPU).

A user sizes a box by that flag, so the engine measures its real footprint once at start-up
(vLLM profiles device memory the same way) and logs it; the bench and the tests read it back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True, slots=True)
class CacheMemory:
    """The KV cache (and any state or cross-attention caches beside it) against its budget.

    Args:
        budget: `--kv-cache-memory`, bytes.
        allocated: bytes of every cache tensor the engine holds, each storage counted once.
        measured: what the device's memory grew by while the caches were built (RSS on CPU,
            `torch.cuda.max_memory_allocated` on CUDA); None where it cannot be read.
        kv_bytes_per_token: K and V of one token over all layers.
        num_blocks: paged KV blocks of `block_size` tokens.
        is_capped: fewer blocks than the budget holds (`max_num_seqs x max_model_len` is all
            requests could ever use, or `--num-blocks` was given): the budget is not spent.
    """

    budget: int
    allocated: int
    measured: int | None
    kv_bytes_per_token: int
    num_blocks: int
    block_size: int
    is_capped: bool

    @property
    def allocated_share(self) -> float:
        """allocated / budget: just under 1.0 when the budget binds (less than a block lost)."""
        return self.allocated / self.budget

    @property
    def measured_ratio(self) -> float | None:
        """measured / allocated: 1.0 when every allocated page is really in memory."""
        return None if self.measured is None else self.measured / max(self.allocated, 1)

    def describe(self) -> str:
        measured = "unmeasured"
        if self.measured is not None:
            measured = f"measured {self.measured / 2**20:.1f} MiB ({self.measured_ratio:.3f}x)"
        capped = "; capped: requests can never use more" if self.is_capped else ""
        return (
            f"KV cache {self.kv_bytes_per_token} bytes per token, {self.num_blocks} blocks x "
            f"{self.block_size}; allocated {self.allocated / 2**20:.1f} MiB of "
            f"--kv-cache-memory {self.budget / 2**20:.1f} MiB ({self.allocated_share:.3f}), "
            f"{measured}{capped}"
        )


def measure_caches(
    meter: MemoryMeter,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    others: list[torch.Tensor],
    kv_memory: int,
    budget: int,
    block_size: int,
) -> CacheMemory:
    """The report on caches just built while `meter` ran.

    Args:
        kv_caches: per layer (k_cache [num_blocks, block_size, ...], v_cache).
        others: the other cache tensors from the same budget (cross-attention K/V, states).
        kv_memory: what the budget left for the paged KV cache after `others`.
    """
    measured = meter.growth()
    num_blocks = kv_caches[0][0].shape[0] if kv_caches else 0
    kv_tensors = [t for pair in kv_caches for t in pair]
    kv_bytes = tensors_nbytes(kv_tensors)
    block_bytes = kv_bytes // max(num_blocks, 1)
    return CacheMemory(
        budget=budget,
        allocated=tensors_nbytes([*kv_tensors, *others]),
        measured=measured,
        kv_bytes_per_token=block_bytes // block_size,
        num_blocks=num_blocks,
        block_size=block_size,
        # another block would still have fit: the cap or --num-blocks decided, not the budget;
        # with no KV at all (Mamba) the states, at most one slot per max_num_seqs, are all it
        # holds: reported as capped, since blocks are not what the budget buys there
        is_capped=kv_bytes + block_bytes <= kv_memory if block_bytes else True,
    )


def tensors_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind `tensors`, each once (a latent cache's V is a view of K)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


class MemoryMeter:
    """How much a device's memory grows between `MemoryMeter(device)` and `growth()`.

    NOTE: on CPU this is the process's RSS, so it sees only pages really touched: a cache made
    by `torch.empty` would read ~0 here, which is why the caches are zero-filled.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._start = torch.cuda.memory_allocated(device)
        else:
            self._start = resident_bytes() if device.type == "cpu" else None

    def growth(self) -> int | None:
        if self._start is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._start
        now = resident_bytes()
        return None if now is None else now - self._start


def resident_bytes() -> int | None:
    """This process's resident set size (Linux /proc); None elsewhere."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
