"""The per-step attention metadata: one engine step flattened for the attention kernels.

Both backends (the torch reference and flash-attn) and the forward context read it; it imports
no other kernel module, so every arrow in `kernels/` points at it and none back.

Bidirectional ranges: positions `[start, end)` of a request that attend each other both ways
(HF's `block_sequence_ids`: Gemma 3's image tokens, PaliGemma's prefix); everything else is
causal. A key inside a range is visible to a query of the same range even when it comes later,
so every range a step's queries sit in must end inside the step (`end <= seq_len`): the
scheduler never ends a prefill chunk inside one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

Ranges = tuple[tuple[int, int], ...]  # (start, end) position ranges, sorted and disjoint


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """One engine step, flattened: B requests, T new tokens in total.

    Request i's new tokens are rows `query_start_loc[i]:query_start_loc[i + 1]` of the step's
    tensors and are the LAST `q_len_i` of its `seq_len_i` tokens.
    """

    query_start_loc: torch.Tensor  # [B + 1] int32 on device
    seq_lens: torch.Tensor  # [B] int32: tokens in the KV cache AFTER this step
    block_table: torch.Tensor  # [B, max_blocks_per_seq] int32, padded with 0
    slot_mapping: torch.Tensor  # [T] int64: where each new token's K/V goes
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: tuple[int, ...]  # host copy of query_start_loc
    seq_lens_cpu: tuple[int, ...]  # host copy of seq_lens
    # per request, the bidirectional ranges that give one of its new queries a LATER key;
    # () for every request when the step is plain causal
    bidirectional_cpu: tuple[Ranges, ...] = ()

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_cpu[-1]

    @property
    def has_bidirectional(self) -> bool:
        """Some query of this step sees a later key: the step is not plain causal."""
        return any(self.bidirectional_cpu)

    def bidirectional_of(self, req: int) -> Ranges:
        """Request `req`'s ranges that matter this step (see `bidirectional_cpu`)."""
        return self.bidirectional_cpu[req] if self.bidirectional_cpu else ()

    @classmethod
    def build(
        cls,
        query_lens: Sequence[int],
        seq_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: torch.device | str | None = None,
        bidirectional_ranges: Sequence[Ranges] | None = None,
    ) -> AttentionMetadata:
        """Metadata for a step from per-request host lists (tests and the runner use it).

        Args:
            query_lens: new tokens of each request in this step.
            seq_lens: tokens of each request in the cache after this step (>= query_len).
            block_tables: each request's block ids, covering at least `seq_len` tokens.
            block_size: tokens per KV block.
            device: where the tensors go (CPU when None).
            bidirectional_ranges: per request, its `(start, end)` position ranges that attend
                both ways (sorted, disjoint); None: all causal.
        """
        _check_batch(query_lens, seq_lens, block_tables, block_size)
        bidirectional = _step_ranges(query_lens, seq_lens, bidirectional_ranges)
        query_start_loc = [0, *itertools.accumulate(query_lens)]
        block_table = _padded_block_table(block_tables)  # [B, max_blocks] on CPU
        slot_mapping = _slot_mapping(query_lens, seq_lens, block_table, block_size)
        return cls(
            query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
            block_table=block_table.to(device),
            slot_mapping=slot_mapping.to(device),
            max_query_len=max(query_lens, default=0),
            max_seq_len=max(seq_lens, default=0),
            query_start_loc_cpu=tuple(query_start_loc),
            seq_lens_cpu=tuple(int(n) for n in seq_lens),
            bidirectional_cpu=bidirectional,
        )


def _check_batch(
    query_lens: Sequence[int],
    seq_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not len(query_lens) == len(seq_lens) == len(block_tables):
        raise ValueError(
            f"one entry per request expected: {len(query_lens)} query lens, "
            f"{len(seq_lens)} seq lens, {len(block_tables)} block tables"
        )
    for i, (q_len, seq_len, table) in enumerate(
        zip(query_lens, seq_lens, block_tables, strict=True)
    ):
        if not 0 <= q_len <= seq_len:
            raise ValueError(f"request {i}: query_len {q_len} must be in [0, seq_len={seq_len}]")
        if len(table) * block_size < seq_len:
            raise ValueError(
                f"request {i}: {len(table)} blocks of {block_size} cannot hold {seq_len} tokens"
            )


def _padded_block_table(block_tables: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max((len(table) for table in block_tables), default=0) or 1
    rows = [list(table) + [0] * (width - len(table)) for table in block_tables]
    return torch.tensor(rows, dtype=torch.int32).view(len(rows), width)  # [B, width]


def _slot_mapping(
    query_lens: Sequence[int],
    seq_lens: Sequence[int],
    block_table: torch.Tensor,  # [B, width] int32 on CPU
    block_size: int,
) -> torch.Tensor:
    q_lens = torch.tensor(list(query_lens), dtype=torch.int64)  # [B]
    first_pos = torch.tensor(list(seq_lens), dtype=torch.int64) - q_lens  # [B]
    req = torch.repeat_interleave(torch.arange(len(q_lens)), q_lens)  # [T]
    starts = torch.cumsum(q_lens, 0) - q_lens  # [B]
    pos = torch.arange(req.numel()) - starts[req] + first_pos[req]  # [T] position in sequence
    blocks = block_table.long()[req, pos // block_size]  # [T]
    return blocks * block_size + pos % block_size  # [T] int64


def _step_ranges(
    query_lens: Sequence[int], seq_lens: Sequence[int], ranges: Sequence[Ranges] | None
) -> tuple[Ranges, ...]:
    """Each request's ranges that give one of this step's queries a later key; () if none do."""
    if not ranges:
        return ()
    if len(ranges) != len(query_lens):
        raise ValueError(f"{len(ranges)} bidirectional range lists for {len(query_lens)} requests")
    kept = tuple(
        _live_ranges(i, seq_len - q_len, seq_len, request_ranges)
        for i, (q_len, seq_len, request_ranges) in enumerate(
            zip(query_lens, seq_lens, ranges, strict=True)
        )
    )
    return kept if any(kept) else ()


def _live_ranges(req: int, first: int, seq_len: int, ranges: Ranges) -> Ranges:
    """The ranges in which a query in [first, seq_len) has a later key (in its range)."""
    live = []
    for start, end in ranges:
        if end <= first or start >= seq_len:
            continue  # none of the step's queries is in it
        if end > seq_len:
            raise ValueError(
                f"request {req}: bidirectional range [{start}, {end}) ends after the step's "
                f"{seq_len} tokens; a prefill chunk must not end inside one"
            )
        if max(start, first) < end - 1:  # else only its last position is queried: causal
            live.append((int(start), int(end)))
    return tuple(live)
