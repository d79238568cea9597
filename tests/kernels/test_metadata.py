"""AttentionMetadata: one step flattened, slots computed from block tables."""

from __future__ import annotations

import pytest
import torch

from kernels.metadata import AttentionMetadata


def test_build_metadata_slot_mapping_by_hand():
    meta = AttentionMetadata.build(
        query_lens=[2, 1, 3], seq_lens=[5, 4, 3], block_tables=[[7, 2], [4], [9]], block_size=4
    )
    # request 0: positions 3, 4 -> block 7 offset 3, block 2 offset 0
    # request 1: position 3 -> block 4 offset 3; request 2: positions 0..2 -> block 9
    assert meta.slot_mapping.tolist() == [31, 8, 19, 36, 37, 38]
    assert meta.slot_mapping.dtype == torch.int64
    assert meta.query_start_loc.tolist() == [0, 2, 3, 6]
    assert meta.query_start_loc.dtype == torch.int32
    assert meta.block_table.tolist() == [[7, 2], [4, 0], [9, 0]]
    assert meta.block_table.dtype == torch.int32
    assert meta.seq_lens.tolist() == [5, 4, 3]
    assert (meta.max_query_len, meta.max_seq_len) == (3, 5)
    assert meta.query_start_loc_cpu == (0, 2, 3, 6) and meta.seq_lens_cpu == (5, 4, 3)
    assert (meta.num_reqs, meta.num_tokens) == (3, 6)


@pytest.mark.parametrize(
    ("query_lens", "seq_lens", "tables", "message"),
    [
        ([3], [2], [[1]], "query_len"),
        ([1], [9], [[1, 2]], "cannot hold"),
        ([1, 1], [1], [[1]], "one entry per request"),
    ],
)
def test_build_metadata_rejects_inconsistent_batches(query_lens, seq_lens, tables, message):
    with pytest.raises(ValueError, match=message):
        AttentionMetadata.build(query_lens, seq_lens, tables, block_size=4)


def test_build_metadata_rejects_a_zero_block_size():
    with pytest.raises(ValueError, match="block_size"):
        AttentionMetadata.build([1], [1], [[1]], block_size=0)


def test_empty_step_has_one_padded_block_column():
    meta = AttentionMetadata.build([], [], [], block_size=4)
    assert (meta.num_reqs, meta.num_tokens) == (0, 0)
    assert tuple(meta.block_table.shape) == (0, 1)
    assert meta.slot_mapping.shape == (0,)
