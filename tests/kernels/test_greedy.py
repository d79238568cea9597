"""first_argmax is torch.argmax: random rows, ties inside and across chunks, the tail, NaN."""

from __future__ import annotations

import pytest
import torch

from kernels.greedy import CHUNK, first_argmax


@pytest.mark.parametrize("width", [7, CHUNK, 2 * CHUNK, 5 * CHUNK + 37, 151936])
@pytest.mark.parametrize("rows", [1, 5])
def test_matches_argmax_on_random_rows(rows, width):
    logits = torch.randn(rows, width, generator=torch.Generator().manual_seed(width))
    assert torch.equal(first_argmax(logits), logits.argmax(dim=-1))


def test_ties_give_the_first_index():
    logits = torch.zeros(4, 3 * CHUNK + 10)
    logits[0, [5, CHUNK + 5]] = 3.0  # across chunks
    logits[1, [CHUNK + 1, CHUNK + 2]] = 3.0  # inside one chunk
    logits[2, [3 * CHUNK + 2, 3 * CHUNK + 9]] = 3.0  # both in the tail
    # row 3: all equal -> 0
    assert first_argmax(logits).tolist() == [5, CHUNK + 1, 3 * CHUNK + 2, 0]


def test_maximum_in_the_tail_or_the_last_column():
    logits = torch.zeros(2, 2 * CHUNK + 3)
    logits[0, -1] = 1.0
    logits[1, 2 * CHUNK - 1] = 1.0
    assert first_argmax(logits).tolist() == [2 * CHUNK + 2, 2 * CHUNK - 1]


def test_nan_and_empty_rows_behave_like_argmax():
    logits = torch.randn(2, 4 * CHUNK)
    logits[1, [CHUNK + 3, 3 * CHUNK]] = float("nan")
    assert torch.equal(first_argmax(logits), logits.argmax(dim=-1))
    assert first_argmax(torch.empty(0, 4 * CHUNK)).shape == (0,)
