"""The torch reference of paged attention: runs on any device and is the ground truth.

- decode requests (one new token) are batched: their K/V are gathered block-wise through the
  block table into `[B, S, num_kv_heads, head_dim]` and attended in one masked SDPA call, with
  the query heads of a KV group laid out as the query rows of that KV head (no KV expansion);
- each prefill chunk runs SDPA against its whole sequence: `is_causal` when the chunk is the
  whole sequence and no window or bidirectional range changes it, an explicit mask otherwise
  (a bidirectional range opens the keys of the range to every query in it, then the window
  cuts: HF's `AND(sliding_window, OR(causal, blockwise))`, Gemma 3's rule);
- ALiBi (Bloom, MPT, Falcon-RW) adds `slope[h] * (k - p)` to the score of the query at position
  p for the key at k (`kernels.alibi`); the mask then turns into that float bias;
- the value head dim may differ from the query/key head dim (MLA's latent cache reads V as the
  first lanes of K): the output has the values' head dim.
Host copies of the lengths (`*_cpu`) drive all the Python-level decisions, so nothing syncs
with the device. A decode's output is bit-identical alone or batched with longer sequences
(masked padding adds exact zeros). The gather copies each decode's K/V once per layer: on CPU
call `kernels.cpu_allocator.tune_cpu_allocator()` at start-up, or those copies page-fault.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.metadata import AttentionMetadata, Ranges


@dataclass(frozen=True, slots=True)
class _PrefillChunk:
    req: int
    row_start: int
    row_end: int
    seq_len: int


@dataclass(frozen=True, slots=True)
class _BatchPlan:
    """How the reference splits a step: batched decodes, then one SDPA per prefill chunk."""

    decode_reqs: tuple[int, ...]  # requests with exactly one new token
    decode_rows: tuple[int, ...]  # their token rows
    decode_is_span: bool  # decode requests AND their rows are consecutive: slice, no gather
    max_decode_seq_len: int
    prefills: tuple[_PrefillChunk, ...]


@functools.lru_cache(maxsize=8)
def _plan(query_start_loc: tuple[int, ...], seq_lens: tuple[int, ...]) -> _BatchPlan:
    # NOTE: a memo of a pure function of host tuples; every layer of a step reuses it.
    decode_reqs: list[int] = []
    prefills: list[_PrefillChunk] = []
    for req, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[req], query_start_loc[req + 1]
        if end - start == 1:
            decode_reqs.append(req)
        elif end > start:
            prefills.append(_PrefillChunk(req, start, end, seq_len))
    decode_rows = tuple(query_start_loc[req] for req in decode_reqs)
    n = len(decode_reqs)
    is_span = n > 0 and decode_reqs[-1] - decode_reqs[0] == n - 1
    return _BatchPlan(
        decode_reqs=tuple(decode_reqs),
        decode_rows=decode_rows,
        decode_is_span=is_span,
        max_decode_seq_len=max((seq_lens[req] for req in decode_reqs), default=0),
        prefills=tuple(prefills),
    )


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    new_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new tokens over its whole cached sequence.

    Args:
        query: `[T, num_heads, head_dim]`.
        k_cache: `[num_blocks, block_size, num_kv_heads, head_dim]`, v_cache: the same with
            `v_head_dim` lanes; both already hold this step's K/V (see `write_kv_cache`).
        meta: the step.
        scale: softmax scale (usually `head_dim ** -0.5`).
        sliding_window: HF semantics: the query at position p sees keys k with
            `p - k < sliding_window`. None: unlimited.
        logits_soft_cap: Gemma2's `cap * tanh(scores / cap)` before the softmax. None: off.
        alibi_slopes: `[num_heads]` float32 ALiBi slopes (after any scaling). None: off.
        new_kv: this step's key `[T, Hkv, D]` and value `[T, Hkv, Dv]` rows, in the caches'
            dtypes: a prefill chunk that is its whole sequence attends them directly instead
            of gathering the same values back out of the cache. None: always gather.

    Returns:
        `[T, num_heads, v_head_dim]`.
    """
    _check_heads(query, k_cache, v_cache)
    plan = _plan(meta.query_start_loc_cpu, meta.seq_lens_cpu)
    options = _Options(scale, sliding_window, logits_soft_cap, alibi_slopes)
    out_shape = (*query.shape[:2], v_cache.shape[3])
    if query.shape[0] == 0:
        return query.new_empty(out_shape)
    if len(plan.decode_reqs) == meta.num_reqs == query.shape[0]:  # a pure decode step
        num_blocks = -(-plan.max_decode_seq_len // k_cache.shape[1])
        block_table = meta.block_table[:, :num_blocks]
        return _decode_attention(query, k_cache, v_cache, block_table, meta.seq_lens, options)
    out = query.new_empty(out_shape)  # [T, H, Dv] contiguous
    if plan.decode_reqs:
        _decode_into(out, query, k_cache, v_cache, meta, plan, options)
    for chunk in plan.prefills:
        out[chunk.row_start : chunk.row_end] = _prefill_chunk(
            query[chunk.row_start : chunk.row_end], k_cache, v_cache, meta, chunk, options, new_kv
        )
    return out


@dataclass(frozen=True, slots=True)
class _Options:
    scale: float
    sliding_window: int | None
    logits_soft_cap: float | None
    alibi_slopes: torch.Tensor | None = None  # [H] float32

    @property
    def is_plain(self) -> bool:
        """No soft cap and no ALiBi: SDPA with a boolean mask does it all."""
        return self.logits_soft_cap is None and self.alibi_slopes is None


def _check_heads(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    num_heads, num_kv_heads = query.shape[1], k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if query.shape[2] != k_cache.shape[3]:
        raise ValueError(f"query head_dim {query.shape[2]} != cache head_dim {k_cache.shape[3]}")
    if v_cache.shape[:3] != k_cache.shape[:3]:
        raise ValueError(f"v_cache {tuple(v_cache.shape)} does not match k_cache's blocks/heads")


def _gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """`[num_blocks, bs, Hkv, D]` x `[..., n]` block ids -> `[..., n * bs, Hkv, D]`."""
    block_size, num_kv_heads, head_dim = cache.shape[1:]
    # NOTE: index_select also copies a strided view (MLA's V: the first lanes of K) into a
    # contiguous tensor, so the .view below is safe. int64 ids: index_select with int32 ids
    # is several times slower on CPU
    flat = cache.index_select(0, block_ids.reshape(-1).long())  # [N * n, bs, Hkv, D]
    return flat.view(
        *block_ids.shape[:-1], block_ids.shape[-1] * block_size, num_kv_heads, head_dim
    )


def _decode_into(
    out: torch.Tensor,
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    plan: _BatchPlan,
    options: _Options,
) -> None:
    """All one-token requests at once; writes their rows of `out`."""
    n, device = len(plan.decode_reqs), query.device
    num_blocks = -(-plan.max_decode_seq_len // k_cache.shape[1])
    if plan.decode_is_span:
        reqs, rows = slice(plan.decode_reqs[0], plan.decode_reqs[0] + n), None
        block_table, seq_lens = meta.block_table[reqs, :num_blocks], meta.seq_lens[reqs]
        q = query[plan.decode_rows[0] : plan.decode_rows[0] + n]  # [n, H, D]
    else:
        req_ids = torch.tensor(plan.decode_reqs, device=device)
        rows = torch.tensor(plan.decode_rows, device=device)
        block_table = meta.block_table.index_select(0, req_ids)[:, :num_blocks]
        seq_lens, q = meta.seq_lens.index_select(0, req_ids), query.index_select(0, rows)
    result = _decode_attention(q, k_cache, v_cache, block_table, seq_lens, options)  # [n, H, Dv]
    if rows is None:
        out[plan.decode_rows[0] : plan.decode_rows[0] + n] = result
    else:
        out.index_copy_(0, rows, result)


def _decode_attention(
    query: torch.Tensor,  # [n, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,  # [n, num_blocks]
    seq_lens: torch.Tensor,  # [n]
    options: _Options,
) -> torch.Tensor:
    n, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    keys = _gather_blocks(k_cache, block_table).transpose(1, 2)  # [n, Hkv, S, D]
    values = _gather_blocks(v_cache, block_table).transpose(1, 2)  # [n, Hkv, S, Dv]
    key_pos = torch.arange(keys.shape[2], device=query.device)  # [S]
    last = seq_lens.to(torch.int64)[:, None] - 1  # [n, 1] the query's position
    mask = key_pos <= last  # [n, S]
    if options.sliding_window is not None:
        mask &= last - key_pos < options.sliding_window
    # the G query heads of a KV group act as G query rows of that KV head: no KV expansion
    group = num_heads // num_kv_heads
    q = query.view(n, num_kv_heads, group, head_dim)  # [n, Hkv, G, D]
    attn_mask = mask[:, None, None, :]  # [n, 1, 1, S]
    if options.alibi_slopes is not None:
        slopes = options.alibi_slopes.view(num_kv_heads, group, 1)  # [Hkv, G, 1]
        attn_mask = _alibi_bias(slopes, (key_pos - last)[:, None, None, :], attn_mask, q.dtype)
    out = _attend(q, keys, values, attn_mask, options)  # [n, Hkv, G, Dv]
    return out.reshape(n, num_heads, values.shape[-1]).contiguous()  # SDPA may mirror q's strides


def _prefill_chunk(
    query: torch.Tensor,  # [L, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    chunk: _PrefillChunk,
    options: _Options,
    new_kv: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    q_len, seq_len = query.shape[0], chunk.seq_len
    if new_kv is not None and q_len == seq_len:  # the cache holds just these rows
        rows = slice(chunk.row_start, chunk.row_end)
        keys, values = new_kv[0][rows].transpose(0, 1), new_kv[1][rows].transpose(0, 1)
    else:
        num_blocks = -(-seq_len // k_cache.shape[1])
        block_ids = meta.block_table[chunk.req, :num_blocks]
        keys = _gather_blocks(k_cache, block_ids)[:seq_len].transpose(0, 1)  # [Hkv, S, D]
        values = _gather_blocks(v_cache, block_ids)[:seq_len].transpose(0, 1)  # [Hkv, S, Dv]
    window = options.sliding_window
    ranges = meta.bidirectional_of(chunk.req)
    whole = q_len == seq_len and (window is None or window >= seq_len) and not ranges
    mask = None if whole else _prefill_mask(q_len, seq_len, window, query.device, ranges)
    q = query.transpose(0, 1)  # [H, L, D]
    return _attend_gqa(q, keys, values, mask, options).transpose(0, 1)  # [L, H, Dv]


def _prefill_mask(
    q_len: int,
    seq_len: int,
    window: int | None,
    device: torch.device,
    ranges: Ranges = (),
) -> torch.Tensor:
    """`[L, S]` bool: query i sits at position `seq_len - q_len + i`; a query inside a
    bidirectional range also sees the range's later keys."""
    q_pos = torch.arange(seq_len - q_len, seq_len, device=device)[:, None]  # [L, 1]
    k_pos = torch.arange(seq_len, device=device)[None, :]  # [1, S]
    mask = k_pos <= q_pos
    for start, end in ranges:
        mask |= (start <= q_pos) & (q_pos < end) & (start <= k_pos) & (k_pos < end)
    if window is not None:
        mask &= q_pos - k_pos < window
    return mask


def _attend_gqa(
    q: torch.Tensor,  # [H, L, D]
    keys: torch.Tensor,  # [Hkv, S, D]
    values: torch.Tensor,  # [Hkv, S, Dv]
    mask: torch.Tensor | None,  # [L, S] bool, None: plain causal over the whole sequence
    options: _Options,
) -> torch.Tensor:
    if options.is_plain:
        return F.scaled_dot_product_attention(
            q[None],
            keys[None],
            values[None],
            attn_mask=mask,
            is_causal=mask is None,
            scale=options.scale,
            enable_gqa=q.shape[0] != keys.shape[0],
        )[0]
    num_heads, q_len, head_dim = q.shape
    num_kv_heads, seq_len = keys.shape[:2]
    if mask is None:
        mask = _prefill_mask(q_len, q_len, None, q.device)
    group = num_heads // num_kv_heads
    grouped = q.view(num_kv_heads, group, q_len, head_dim)  # [Hkv, G, L, D]
    attn_mask: torch.Tensor = mask  # [L, S]
    if options.alibi_slopes is not None:
        slopes = options.alibi_slopes.view(num_kv_heads, group, 1, 1)  # [Hkv, G, 1, 1]
        k_pos = torch.arange(seq_len, device=q.device)
        rel = k_pos[None, :] - k_pos[seq_len - q_len :, None]  # [L, S] key minus query position
        attn_mask = _alibi_bias(slopes, rel, mask, q.dtype)  # [Hkv, G, L, S]
    out = _attend(grouped, keys[:, None], values[:, None], attn_mask, options)  # [Hkv, G, L, Dv]
    return out.reshape(num_heads, q_len, values.shape[-1])


def _alibi_bias(
    slopes: torch.Tensor, rel: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The additive mask of ALiBi: `slope * (k - p)` where `mask` allows, -inf elsewhere.

    NOTE: in the queries' dtype, as SDPA wants its float mask (HF's Bloom also adds its ALiBi
    tensor in the model's dtype).
    """
    bias = (slopes * rel).masked_fill(~mask, float("-inf"))  # broadcast of both
    return bias.to(dtype)


def _attend(
    q: torch.Tensor,  # [..., M, D]
    keys: torch.Tensor,  # [..., S, D] broadcastable against q
    values: torch.Tensor,  # [..., S, Dv]
    mask: torch.Tensor,  # bool (True: attend) or additive float, broadcastable to [..., M, S]
    options: _Options,
) -> torch.Tensor:
    if options.logits_soft_cap is None:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=options.scale)
    cap = options.logits_soft_cap
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * options.scale  # [..., M, S]
    scores = torch.tanh(scores / cap) * cap
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    probs = scores.softmax(dim=-1).to(values.dtype)
    return torch.matmul(probs, values)  # [..., M, Dv]
