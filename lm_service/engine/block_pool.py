"""Paged KV blocks: a fixed pool, an O(1) LRU free queue and a prefix cache.

The pool hands out `num_blocks` blocks of `block_size` token slots. A request's `block_ids`
is its block table, append-only while it runs. With prefix caching on, every FULL block whose
KV has been computed is registered under a chained hash of its content; a later request whose
prompt starts with the same content reuses those blocks instead of recomputing them.

A freed block keeps its hash and stays reusable until allocation evicts it: the free queue is
least recently freed first, and blocks holding nothing reusable go to its head.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from lm_service.engine.request import Request

BlockHash = bytes


def hash_block(
    parent_hash: BlockHash | None, token_ids: tuple[int, ...], extra_keys: tuple = ()
) -> BlockHash:
    """Chained hash of one full block: (parent block's hash, its token ids, extra keys).

    NOTE: blake2b (16 bytes) over the repr of a tuple of ints/strs/bytes. Unlike Python's
    hash() of a tuple holding strings, it is the same in every process and run (replicas and
    restarts agree), and a collision is negligible, so a hit needs no token comparison.
    """
    payload = repr((parent_hash, tuple(token_ids), tuple(extra_keys))).encode()
    return hashlib.blake2b(payload, digest_size=16).digest()


def block_extra_keys(request: Request, start: int, end: int) -> tuple:
    """What besides token ids decides the KV of positions [start, end) of a request.

    Each media span overlapping the block adds (content_hash, offset relative to the block), so
    prompts that differ only in an image (same placeholder ids) never share KV; an adapter adds
    its id. A bidirectional range reaching past the block adds what it holds after the block:
    those later tokens shaped this block's KV too.
    """
    keys: tuple = tuple(
        (span.content_hash, span.offset - start)
        for span in request.mm_spans
        if span.offset < end and span.end > start
    )
    keys += tuple(
        ("bidirectional", range_start - start, _range_tail(request, end, range_end))
        for range_start, range_end in request.bidirectional_ranges
        if range_start < end < range_end
    )
    if request.adapter_id is not None:
        keys += (("adapter", request.adapter_id),)
    return keys


def _range_tail(request: Request, start: int, end: int) -> bytes:
    """A digest of positions [start, end) of the prompt: token ids and the media in them."""
    media = tuple(
        (span.content_hash, span.offset - start)
        for span in request.mm_spans
        if span.offset < end and span.end > start
    )
    payload = repr((tuple(request.prompt_token_ids[start:end]), media)).encode()
    return hashlib.blake2b(payload, digest_size=16).digest()


@dataclass(eq=False, slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None  # set once the block is full, computed and cached


class ComputedBlocks(NamedTuple):
    """The longest cached prefix of a request: its blocks and the tokens they hold."""

    blocks: list[Block]
    num_tokens: int


@dataclass(slots=True)
class PrefixCacheStats:
    """Prefix-cache lookups, in tokens, counted at each admission (a resumed request again)."""

    num_query_tokens: int = 0
    num_hit_tokens: int = 0
    num_evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_query_tokens if self.num_query_tokens else 0.0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockPool:
    """Fixed pool of KV blocks with ref counts, LRU eviction and a prefix cache.

    Args:
        num_blocks: blocks in the KV cache.
        block_size: token slots per block.
        enable_prefix_caching: register full computed blocks and reuse them across requests.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(block_id) for block_id in range(num_blocks)]
        # NOTE: head = next to evict; an OrderedDict gives O(1) pop, append and removal.
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[BlockHash, Block] = {}
        self._num_cached_blocks: dict[str, int] = {}  # request id -> blocks registered so far
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (cached free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def get_computed_blocks(self, request: Request) -> ComputedBlocks:
        """Longest prefix of the request's tokens already in the cache, in full blocks.

        NOTE: never the whole sequence: at least its last token is recomputed, so that the
        last position yields logits.
        """
        if not self.enable_prefix_caching:
            return ComputedBlocks([], 0)
        num_full_blocks = (request.num_tokens - 1) // self.block_size
        self._extend_block_hashes(request, num_full_blocks)
        blocks: list[Block] = []
        for block_hash in request.block_hashes[:num_full_blocks]:
            block = self._cached.get(block_hash)
            if block is None:
                break
            blocks.append(block)
        return ComputedBlocks(blocks, len(blocks) * self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def num_blocks_to_allocate(
        self, request: Request, num_new_tokens: int, computed: ComputedBlocks | None = None
    ) -> int:
        """Free blocks that `allocate_slots` with these arguments would take from the queue."""
        num_tokens = request.num_computed_tokens + num_new_tokens
        hit_blocks: list[Block] = []
        if computed is not None:
            num_tokens += computed.num_tokens
            hit_blocks = computed.blocks
        num_new_blocks = (
            cdiv(num_tokens, self.block_size) - len(request.block_ids) - len(hit_blocks)
        )
        num_revived = sum(1 for block in hit_blocks if block.ref_count == 0)
        return max(num_new_blocks, 0) + num_revived

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed: ComputedBlocks | None = None
    ) -> bool:
        """Grow the request's block table to hold num_computed_tokens + num_new_tokens tokens.

        `computed` (from get_computed_blocks) is given when the request is admitted: its blocks
        are shared (ref_count + 1, out of the free queue) and count as computed tokens.
        Returns False and changes nothing when there are not enough free blocks.
        """
        if not self.can_allocate(self.num_blocks_to_allocate(request, num_new_tokens, computed)):
            return False
        if computed is not None:
            self._admit(request, computed)
        num_tokens = request.num_computed_tokens + num_new_tokens
        if computed is not None:
            num_tokens += computed.num_tokens
        for _ in range(cdiv(num_tokens, self.block_size) - len(request.block_ids)):
            request.block_ids.append(self._pop_free().block_id)
        return True

    def cache_full_blocks(self, request: Request) -> None:
        """Register the request's newly full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full_blocks = request.num_computed_tokens // self.block_size
        start = self._num_cached_blocks.get(request.request_id, 0)
        if num_full_blocks <= start:
            return
        self._extend_block_hashes(request, num_full_blocks)
        for index in range(start, num_full_blocks):
            block = self.blocks[request.block_ids[index]]
            block_hash = request.block_hashes[index]
            # NOTE: first block with a given content wins; a duplicate stays unhashed.
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash = block_hash
                self._cached[block_hash] = block
        self._num_cached_blocks[request.request_id] = num_full_blocks

    def free(self, request: Request) -> None:
        """Drop the request's hold on its blocks; released blocks join the free queue.

        Blocks are released last first, so a request's tail is evicted before its head (a
        head is the part other prompts are likeliest to share). Unhashed blocks hold nothing
        reusable and go to the head of the queue.
        """
        for block_id in reversed(request.block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = block
                if block.block_hash is None:
                    self._free.move_to_end(block_id, last=False)
        request.block_ids.clear()
        self._num_cached_blocks.pop(request.request_id, None)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block; blocks in use stay allocated, merely unhashed."""
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()

    def _admit(self, request: Request, computed: ComputedBlocks) -> None:
        for block in computed.blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1
            request.block_ids.append(block.block_id)
        self._num_cached_blocks[request.request_id] = len(computed.blocks)
        self.stats.num_query_tokens += request.num_tokens
        self.stats.num_hit_tokens += computed.num_tokens

    def _pop_free(self) -> Block:
        _, block = self._free.popitem(last=False)
        if block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash = None
            self.stats.num_evicted_blocks += 1
        block.ref_count = 1
        return block

    def _extend_block_hashes(self, request: Request, num_full_blocks: int) -> None:
        hashes, size = request.block_hashes, self.block_size
        for index in range(len(hashes), num_full_blocks):
            start, end = index * size, (index + 1) * size
            parent = hashes[-1] if hashes else None
            token_ids = tuple(request.all_token_ids[start:end])
            hashes.append(hash_block(parent, token_ids, block_extra_keys(request, start, end)))
