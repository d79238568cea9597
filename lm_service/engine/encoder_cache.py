"""Cross-attention blocks of encoder-decoder models: which request owns which. Pure CPU.

A request with encoder states (Whisper's audio, BART's source text) needs the cross-attention
K/V of every decoder layer over those states for its whole life. They are computed once, at
its first step, into blocks of the engine's cross-attention cache (`cross_kv_cache`), one
block per `block_size` encoder positions. A waiting request is admitted only when its blocks
are free; it gives them back on finish, abort or preemption (a preempted request recomputes
them with its first step, as it recomputes its self-attention KV).
"""

from __future__ import annotations

from collections import deque

from lm_service.engine.request import Request


class EncoderCachePool:
    """`num_blocks` cross-attention blocks of `block_size` encoder positions each.

    Args:
        num_blocks: blocks in the cross-attention cache; 0 for decoder-only models.
        block_size: encoder positions per block.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 0 or block_size < 1:
            raise ValueError(
                f"need num_blocks >= 0 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def enabled(self) -> bool:
        return self.num_blocks > 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks if self.num_blocks else 0.0

    def blocks_needed(self, num_encoder_tokens: int) -> int:
        return -(-num_encoder_tokens // self.block_size)

    def can_allocate(self, request: Request) -> bool:
        if request.cross_block_ids or not request.num_encoder_tokens:
            return True
        return self.blocks_needed(request.num_encoder_tokens) <= self.num_free

    def allocate(self, request: Request) -> None:
        """Give `request` its blocks (no-op without encoder states or when it has them)."""
        if request.cross_block_ids or not request.num_encoder_tokens:
            return
        needed = self.blocks_needed(request.num_encoder_tokens)
        if needed > self.num_free:
            raise RuntimeError("not enough free cross-attention blocks; check can_allocate")
        request.cross_block_ids = [self._free.popleft() for _ in range(needed)]

    def free(self, request: Request) -> None:
        self._free.extend(request.cross_block_ids)
        request.cross_block_ids = []
