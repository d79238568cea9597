"""Multi-head latent attention (DeepSeek-V2/V3, MiniCPM3) on a paged cache of its latent.

MLA compresses each token's keys and values into one latent `c` (kv_lora_rank lanes, after
`kv_a_layernorm`) plus one shared rotary key `k_pe` (qk_rope_head_dim lanes); HF then expands
them per head with `kv_b_proj`: `k_nope[h] = W_UK[h] c`, `v[h] = W_UV[h] c`. We cache only
`[c, k_pe]` (one "head" of kv_lora_rank + rope lanes per token and layer) and attend in the
absorbed form, as vLLM does: `q_nope[h] . W_UK[h] c = (W_UK[h]^T q_nope[h]) . c`, so the query
becomes `[W_UK[h]^T q_nope[h], q_pe[h]]` against the latent as its key (multi-query, one KV
head), the latent's first kv_lora_rank lanes are the values, and the output goes through
`W_UV[h]` afterwards. Scores are the same numbers HF computes, summed in another order.

Per token and layer the cache holds kv_lora_rank + qk_rope_head_dim elements instead of the
naive `num_heads * (qk_head_dim + v_head_dim)`: 576 vs 40960 (71x) for DeepSeek-V3.

`install_latent_attention` replaces each MLA module's `expand_kv` (HF calls it after rotary,
with exactly the latent we cache) by one that hands the latent on as key and value;
`lm_service.models.hf_attention` then finds the module's `LatentAttention` and runs the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from protos.errors import Unsupported

LATENT_ATTR = "meshserve_latent_attention"
logger = logging.getLogger(__name__)
_MLA_FIELDS = ("kv_b_proj", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


@dataclass(frozen=True, slots=True)
class LatentAttention:
    """One MLA layer's absorbed projections; reads `kv_b_proj`'s weight at each call."""

    kv_b_proj: nn.Linear  # weight [H * (nope + v), lora]
    num_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def cached_lanes(self) -> int:
        """Cache elements per token: the latent (which doubles as the values), the rotary key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def naive_lanes(self) -> int:
        """What caching the expanded heads would take: K and V of every head."""
        qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.num_heads * (qk_head_dim + self.v_head_dim)

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.kv_b_proj.weight.view(
            self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank
        )
        return w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim :]  # W_UK, W_UV

    def absorb_query(self, query: torch.Tensor) -> torch.Tensor:
        """`[T, H, nope + rope]` -> `[T, H, lora + rope]`: W_UK folded into the query."""
        w_uk, _ = self._weights()  # [H, nope, lora]
        q_nope, q_pe = query[..., : self.qk_nope_head_dim], query[..., self.qk_nope_head_dim :]
        q_latent = torch.einsum("thn,hnl->thl", q_nope, w_uk.to(query.dtype))  # [T, H, lora]
        return torch.cat([q_latent, q_pe], dim=-1)

    def expand_output(self, out: torch.Tensor) -> torch.Tensor:
        """`[T, H, lora]` (attention over the latents) -> `[T, H, v_head_dim]` through W_UV."""
        _, w_uv = self._weights()  # [H, v, lora]
        return torch.einsum("thl,hvl->thv", out, w_uv.to(out.dtype))


def latent_attention_of(module: nn.Module) -> LatentAttention | None:
    """The module's `LatentAttention` when `install_latent_attention` made it an MLA layer."""
    return getattr(module, LATENT_ATTR, None)


def is_mla_module(module: nn.Module) -> bool:
    """HF's MLA attention modules (DeepseekV2/V3, MiniCPM3): `expand_kv` over `kv_b_proj`."""
    return callable(getattr(module, "expand_kv", None)) and all(
        hasattr(module, name) for name in _MLA_FIELDS
    )


def install_latent_attention(hf_model: nn.Module) -> int:
    """Makes every MLA module of `hf_model` cache its latent; returns how many it found.

    Raises:
        Unsupported: `kv_b_proj` has a bias (absorbing it is not implemented; no HF MLA has).
    """
    found: list[LatentAttention] = []
    for module in hf_model.modules():
        if not is_mla_module(module):
            continue
        if module.kv_b_proj.bias is not None:
            raise Unsupported(f"{type(module).__name__}: an MLA kv_b_proj with a bias")
        latent = LatentAttention(
            kv_b_proj=module.kv_b_proj,
            num_heads=module.kv_b_proj.out_features
            // (module.qk_nope_head_dim + module.v_head_dim),
            kv_lora_rank=module.kv_lora_rank,
            qk_nope_head_dim=module.qk_nope_head_dim,
            qk_rope_head_dim=module.qk_rope_head_dim,
            v_head_dim=module.v_head_dim,
        )
        setattr(module, LATENT_ATTR, latent)
        module.expand_kv = _latent_as_key_and_value  # instance attribute: shadows the method
        found.append(latent)
    if found:
        first = found[0]
        logger.info(
            "%d MLA layers cache their compressed latent: %d elements per token and layer "
            "instead of %d for expanded K and V (%.1fx less KV memory)",
            len(found),
            first.cached_lanes,
            first.naive_lanes,
            first.naive_lanes / first.cached_lanes,
        )
    return len(found)


def _latent_as_key_and_value(
    kv_nope: torch.Tensor, k_rot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's `expand_kv(kv_nope [B, 1, S, lora], k_rot [B, 1, S, rope])`, unexpanded: key is
    the latent `[B, 1, S, lora + rope]`, value a view of its first lora lanes."""
    latent = torch.cat([kv_nope, k_rot], dim=-1)
    return latent, latent[..., : kv_nope.shape[-1]]
