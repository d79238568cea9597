"""The guarded forward context: one at a time, never read outside a forward."""

from __future__ import annotations

import threading

import pytest
import torch

from kernels.forward_context import (
    ForwardContext,
    forward_context,
    get_forward_context,
    has_forward_context,
)
from kernels.metadata import AttentionMetadata


def make_context() -> ForwardContext:
    meta = AttentionMetadata.build([2], [2], [[1]], block_size=4)
    cache = torch.zeros(2, 4, 1, 8)
    return ForwardContext(meta, [(cache, cache.clone())])


def test_get_outside_a_context_raises():
    assert not has_forward_context()
    with pytest.raises(RuntimeError, match="no forward context"):
        get_forward_context()


def test_context_is_visible_inside_and_cleared_after():
    ctx = make_context()
    with forward_context(ctx) as entered:
        assert entered is ctx
        assert get_forward_context() is ctx
        assert has_forward_context()
    assert not has_forward_context()


def test_nesting_raises_and_keeps_the_outer_context():
    outer, inner = make_context(), make_context()
    with forward_context(outer):
        with pytest.raises(RuntimeError, match="nested"), forward_context(inner):
            pass
        assert get_forward_context() is outer


def test_cleared_even_when_the_forward_fails():
    with pytest.raises(ValueError), forward_context(make_context()):
        raise ValueError("model blew up")
    assert not has_forward_context()


def test_threads_do_not_share_a_context():
    seen: list[bool] = []
    with forward_context(make_context()):
        thread = threading.Thread(target=lambda: seen.append(has_forward_context()))
        thread.start()
        thread.join()
    assert seen == [False]


def test_context_is_frozen():
    ctx = make_context()
    with pytest.raises(AttributeError):
        ctx.kv_caches = []  # type: ignore[misc]
