"""A random step over a shuffled paged KV cache whose value head dim may differ from the key's,
and its dense float64 answer: what the ALiBi and value-head-dim kernel tests share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.metadata import AttentionMetadata
from tests.kernels.dense_attention import naive_attention

# decodes (q_len 1) scattered among prefill chunks with and without a prefix
MIXED = ([1, 13, 1, 6, 1, 9, 1], [37, 13, 5, 20, 1, 30, 64])


@dataclass
class PagedBatch:
    meta: AttentionMetadata
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor  # [num_blocks, block_size, Hkv, Dv]
    keys: list[torch.Tensor]  # per request [S, Hkv, D]
    values: list[torch.Tensor]  # per request [S, Hkv, Dv]
    query: torch.Tensor  # [T, H, D]
    query_lens: list[int]

    def dense(self, scale: float, **options: object) -> torch.Tensor:
        """`[T, H, Dv]` float64: each request's queries against its whole sequence."""
        outs, start = [], 0
        for q_len, k, v in zip(self.query_lens, self.keys, self.values, strict=True):
            outs.append(naive_attention(self.query[start : start + q_len], k, v, scale, **options))
            start += q_len
        return torch.cat(outs)


def make_paged_batch(
    query_lens: list[int],
    seq_lens: list[int],
    *,
    block_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    v_head_dim: int,
    seed: int = 0,
) -> PagedBatch:
    gen = torch.Generator().manual_seed(seed)
    needed = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(needed) + 4  # spare blocks, and block 0 is never used
    ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables = [ids[sum(needed[:i]) : sum(needed[: i + 1])] for i in range(len(needed))]
    # garbage everywhere (finite): whatever is not a request's token must be masked out
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen) * 50
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, v_head_dim, generator=gen) * 50
    keys = [torch.randn(s, num_kv_heads, head_dim, generator=gen) for s in seq_lens]
    values = [torch.randn(s, num_kv_heads, v_head_dim, generator=gen) for s in seq_lens]
    slots = AttentionMetadata.build(seq_lens, seq_lens, tables, block_size).slot_mapping
    k_cache.view(-1, num_kv_heads, head_dim)[slots] = torch.cat(keys)
    v_cache.view(-1, num_kv_heads, v_head_dim)[slots] = torch.cat(values)
    query = torch.randn(sum(query_lens), num_heads, head_dim, generator=gen)
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size)
    return PagedBatch(meta, k_cache, v_cache, keys, values, query, list(query_lens))
