"""Cross-attention of decoder queries over each request's encoder K/V, kept in a paged cache.

An encoder-decoder model (Whisper, BART) attends from every decoder token to ALL of its
request's encoder states: no causal mask, no window. The encoder K/V of a request are
computed once, at its first step, written into the cross-attention cache and read on every
later step. The cache has the self-attention layout (per layer `k_cache, v_cache:
[num_blocks, block_size, num_kv_heads, head_dim]`); encoder position `e` of a request lives in
slot `block_table[e // block_size] * block_size + e % block_size` of its own block table.

Backends: the torch reference here (any device, the ground truth: one SDPA for all one-token
requests, one per longer chunk) and flash-attn's varlen kernel with `causal=False` and
`block_table` (CUDA, imported lazily). A request with no encoder states (`enc_len == 0`)
gets zeros: it has nothing to attend to, and the model adds them to its residual.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import flash
from kernels.attention import write_kv_cache
from kernels.cross_attention_mask import cross_token_masks
from kernels.forward_context import get_forward_context
from protos.cross_windows import CrossWindow


@dataclass(frozen=True, slots=True)
class CrossAttentionMetadata:
    """The cross-attention side of one step: B requests, T decoder tokens, N new encoder rows.

    Request i's queries are rows `query_start_loc_cpu[i]:query_start_loc_cpu[i + 1]`; it
    attends to its `enc_lens_cpu[i]` encoder positions through `block_table[i]`. The encoder
    states of requests at their first step are rows of `encoder_states`, whose K/V go to
    `slot_mapping`.
    """

    query_start_loc_cpu: tuple[int, ...]  # [B + 1]
    enc_lens_cpu: tuple[int, ...]  # [B] encoder positions of each request
    enc_lens: torch.Tensor  # [B] int32 on device
    block_table: torch.Tensor  # [B, max_blocks] int32, padded with 0
    encoder_states: torch.Tensor | None  # [N, encoder_hidden], None when N == 0
    slot_mapping: torch.Tensor  # [N] int64: where each new encoder row's K/V goes
    # Mllama's per-token masks (kernels.cross_attention_mask); None: every token attends all
    attend_mask: torch.Tensor | None = None  # [T, max_enc_len] bool, True: attend
    no_image: torch.Tensor | None = None  # [T] bool, True: the token attends no image

    @property
    def num_reqs(self) -> int:
        return len(self.enc_lens_cpu)

    @classmethod
    def build(
        cls,
        query_lens: Sequence[int],
        enc_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        new_states: Sequence[torch.Tensor | None],
        device: torch.device | str | None = None,
        windows: Sequence[Sequence[CrossWindow]] | None = None,
        first_positions: Sequence[int] | None = None,
    ) -> CrossAttentionMetadata:
        """Per request: its new decoder tokens, its encoder length, its cross block ids, and
        its encoder states `[enc_len, hidden]` when its K/V are to be written this step
        (else None); with `windows`, also the position of its first new token (the masks)."""
        if not len(query_lens) == len(enc_lens) == len(block_tables) == len(new_states):
            raise ValueError("one query_len, enc_len, block table and state entry per request")
        slots: list[torch.Tensor] = []
        rows: list[torch.Tensor] = []
        for i, (enc_len, table, states) in enumerate(
            zip(enc_lens, block_tables, new_states, strict=True)
        ):
            if len(table) * block_size < enc_len:
                raise ValueError(f"request {i}: {len(table)} blocks cannot hold {enc_len} states")
            if states is None:
                continue
            if states.shape[0] != enc_len:
                raise ValueError(f"request {i}: {states.shape[0]} states for enc_len {enc_len}")
            pos = torch.arange(enc_len)
            ids = torch.tensor(list(table), dtype=torch.int64)
            slots.append(ids[pos // block_size] * block_size + pos % block_size)
            rows.append(states)
        width = max((len(t) for t in block_tables), default=0) or 1
        table = [list(t) + [0] * (width - len(t)) for t in block_tables]
        attend_mask = no_image = None
        if windows is not None and first_positions is not None:
            attend_mask, no_image = cross_token_masks(
                query_lens, first_positions, enc_lens, windows, device
            )
        return cls(
            query_start_loc_cpu=(0, *itertools.accumulate(query_lens)),
            enc_lens_cpu=tuple(int(n) for n in enc_lens),
            enc_lens=torch.tensor(list(enc_lens), dtype=torch.int32, device=device),
            block_table=torch.tensor(table, dtype=torch.int32).view(-1, width).to(device),
            encoder_states=torch.cat(rows).to(device) if rows else None,
            slot_mapping=torch.cat(slots).to(device)
            if slots
            else torch.empty(0, dtype=torch.int64, device=device),
            attend_mask=attend_mask,
            no_image=no_image,
        )


def cross_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: CrossAttentionMetadata,
    *,
    scale: float,
) -> torch.Tensor:
    """The torch reference: query `[T, H, D]` over each request's encoder K/V -> `[T, H, D]`."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    out = query.new_zeros(query.shape)
    if query.shape[0] == 0 or not any(meta.enc_lens_cpu):
        return out
    bounds = meta.query_start_loc_cpu
    decodes = [
        i for i in range(meta.num_reqs) if bounds[i + 1] - bounds[i] == 1 and meta.enc_lens_cpu[i]
    ]
    if decodes:  # all one-token requests in one masked SDPA
        max_len = max(meta.enc_lens_cpu[i] for i in decodes)
        reqs = torch.tensor(decodes, device=query.device)
        table = meta.block_table.index_select(0, reqs)[:, : -(-max_len // block_size)]
        keys = _gather(k_cache, table).transpose(1, 2)  # [n, Hkv, S, D]
        values = _gather(v_cache, table).transpose(1, 2)  # [n, Hkv, S, D]
        lens = meta.enc_lens.index_select(0, reqs).long()  # [n]
        mask = torch.arange(keys.shape[2], device=query.device) < lens[:, None]  # [n, S]
        rows = torch.tensor([bounds[i] for i in decodes], device=query.device)
        if meta.attend_mask is not None:
            allowed = meta.attend_mask.index_select(0, rows)[:, : keys.shape[2]]  # [n, <=S]
            mask = mask & F.pad(allowed, (0, keys.shape[2] - allowed.shape[1]))
        n = len(decodes)
        q = query.index_select(0, rows).view(n, num_kv_heads, num_heads // num_kv_heads, head_dim)
        result = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask[:, None, None, :], scale=scale
        )  # [n, Hkv, G, D]
        out.index_copy_(0, rows, result.reshape(n, num_heads, head_dim).to(out.dtype))
    for i in range(meta.num_reqs):
        start, end, enc_len = bounds[i], bounds[i + 1], meta.enc_lens_cpu[i]
        if end - start <= 1 or not enc_len:
            continue
        table = meta.block_table[i, : -(-enc_len // block_size)]
        keys = _gather(k_cache, table)[:enc_len].transpose(0, 1)  # [Hkv, S, D]
        values = _gather(v_cache, table)[:enc_len].transpose(0, 1)  # [Hkv, S, D]
        q = query[start:end].transpose(0, 1)  # [H, L, D]
        allowed = None
        if meta.attend_mask is not None:
            allowed = meta.attend_mask[start:end, :enc_len][None, None]  # [1, 1, L, S]
        result = F.scaled_dot_product_attention(
            q[None],
            keys[None],
            values[None],
            attn_mask=allowed,
            scale=scale,
            enable_gqa=num_heads != num_kv_heads,
        )[0]  # [H, L, D]
        out[start:end] = result.transpose(0, 1)
    return out


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """`[num_blocks, bs, Hkv, D]` x `[..., n]` block ids -> `[..., n * bs, Hkv, D]`."""
    block_size, num_kv_heads, head_dim = cache.shape[1:]
    flat = cache.index_select(0, block_ids.reshape(-1).long())
    return flat.view(
        *block_ids.shape[:-1], block_ids.shape[-1] * block_size, num_kv_heads, head_dim
    )


def flash_cross_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: CrossAttentionMetadata,
    *,
    scale: float,
) -> torch.Tensor:
    """Same contract as `cross_attention`, on flash-attn (fp16/bf16, CUDA, paged blocks of a
    multiple of 256). NOTE: requests with `enc_len == 0` get zeros, as in the reference."""
    varlen_func = flash._load_varlen_func()
    if varlen_func is None:
        raise RuntimeError("flash-attn is not installed")
    enc_lens = meta.enc_lens.to(torch.int32)
    max_query_len = max((b - a for a, b in itertools.pairwise(meta.query_start_loc_cpu)), default=0)
    out = varlen_func(
        query,
        k_cache,
        v_cache,
        cu_seqlens_q=torch.tensor(meta.query_start_loc_cpu, dtype=torch.int32).to(query.device),
        cu_seqlens_k=F.pad(torch.cumsum(enc_lens, 0, dtype=torch.int32), (1, 0)),
        max_seqlen_q=max_query_len,
        max_seqlen_k=max(meta.enc_lens_cpu, default=0),
        softmax_scale=scale,
        causal=False,
        block_table=meta.block_table.to(torch.int32),
    )
    if all(meta.enc_lens_cpu):
        return out
    empty = torch.repeat_interleave(
        (enc_lens == 0), torch.diff(torch.tensor(meta.query_start_loc_cpu)).to(query.device)
    )
    return out.masked_fill(empty[:, None, None], 0)


class CrossAttention(torch.nn.Module):
    """Cross-attention of one decoder layer over the cross cache of the current forward context.

    The model passes this step's new encoder K/V (`[N, Hkv, D]`, computed from
    `CrossAttentionMetadata.encoder_states`, or None when no request starts this step); they
    are written into `cross_kv_caches[layer_idx]`, then every query attends.

    Args:
        num_heads, num_kv_heads, head_dim: attention geometry (`num_heads % num_kv_heads == 0`).
        scale: softmax scale.
        layer_idx: index into `ForwardContext.cross_kv_caches`.
    """

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, layer_idx: int
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.layer_idx = layer_idx
        self.use_flash: bool | None = None

    def forward(
        self, query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None
    ) -> torch.Tensor:
        """query `[T, H, D]`, key/value `[N, Hkv, D]` or None -> `[T, H, D]`."""
        ctx = get_forward_context()
        meta = ctx.cross_metadata
        k_cache, v_cache = ctx.cross_kv_caches[self.layer_idx]
        if key is not None and value is not None:
            write_kv_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        if self.use_flash is None:
            self.use_flash = flash.is_supported(
                query.device, query.dtype, self.head_dim, k_cache.shape[1]
            )
        # NOTE: flash-attn takes no per-token mask: masked steps (Mllama) use the reference,
        # as do steps without any encoder states (Mllama's text-only prompts): all zeros
        use_flash = self.use_flash and meta.attend_mask is None and any(meta.enc_lens_cpu)
        attend = flash_cross_attention if use_flash else cross_attention
        return attend(query, k_cache, v_cache, meta, scale=self.scale)
