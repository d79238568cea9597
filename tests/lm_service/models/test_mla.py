"""MLA's absorbed attention over the latent cache vs HF's expanded K/V attended densely, the
memory it saves, and how the latent path is put into an HF model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import DeepseekV3Config, MiniCPM3Config

from gateway.tools.tiny_models import tiny_model_path
from kernels.attention import write_cache
from kernels.metadata import AttentionMetadata
from kernels.torch_attention import paged_attention
from lm_service.models import transformers_backend
from lm_service.models.mla import LatentAttention, install_latent_attention, latent_attention_of
from lm_service.models.registry import load_model
from protos.errors import Unsupported
from tests.kernels.dense_attention import naive_attention

HEADS, LORA, ROPE, NOPE, V = 4, 32, 8, 16, 24


def _latent_attention(gen: torch.Generator, heads: int = HEADS) -> LatentAttention:
    kv_b_proj = nn.Linear(LORA, heads * (NOPE + V), bias=False)
    kv_b_proj.weight.data = torch.randn(kv_b_proj.weight.shape, generator=gen) * 0.3
    return LatentAttention(kv_b_proj, heads, LORA, NOPE, ROPE, V)


def _expanded(mla: LatentAttention, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's expand_kv: `[S, lora + rope]` -> keys `[S, H, nope + rope]`, values `[S, H, v]`."""
    kv = mla.kv_b_proj(latents[:, :LORA]).view(-1, HEADS, NOPE + V)
    k_pe = latents[:, None, LORA:].expand(-1, HEADS, -1)
    return torch.cat([kv[..., :NOPE], k_pe], dim=-1), kv[..., NOPE:]


@pytest.mark.parametrize("block_size", [1, 4])
def test_absorbed_attention_on_the_latent_cache_equals_expanded_attention(block_size):
    gen = torch.Generator().manual_seed(block_size)
    mla = _latent_attention(gen)
    query_lens, seq_lens = [1, 7, 1, 5], [19, 7, 3, 12]
    tables, start = [], 1  # block 0 stays unused
    for s in seq_lens:
        n = -(-s // block_size)
        tables.append(list(range(start, start + n)))
        start += n
    latents = [torch.randn(s, LORA + ROPE, generator=gen) for s in seq_lens]
    cache = torch.randn(start + 1, block_size, 1, LORA + ROPE, generator=gen) * 50  # garbage
    everything = AttentionMetadata.build(seq_lens, seq_lens, tables, block_size)
    write_cache(torch.cat(latents)[:, None], cache, everything.slot_mapping)
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size)
    query = torch.randn(sum(query_lens), HEADS, NOPE + ROPE, generator=gen)
    scale = (NOPE + ROPE) ** -0.5
    with torch.no_grad():
        out = paged_attention(mla.absorb_query(query), cache, cache[..., :LORA], meta, scale=scale)
        out = mla.expand_output(out)  # [T, H, v]
        want, row = [], 0
        for q_len, latent in zip(query_lens, latents, strict=True):
            keys, values = _expanded(mla, latent)
            want.append(naive_attention(query[row : row + q_len], keys, values, scale))
            row += q_len
    assert out.shape == (sum(query_lens), HEADS, V)
    torch.testing.assert_close(out.double(), torch.cat(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("config", "cached", "naive"),
    [
        # DeepSeek-V3 (and V2's 128-head 236B model): 128 heads of 192 Q/K + 128 V lanes
        (DeepseekV3Config(), 512 + 64, 128 * (192 + 128)),
        # MiniCPM3-4B: 40 heads of 96 Q/K + 64 V lanes, a 256-lane latent
        (MiniCPM3Config(), 256 + 32, 40 * (96 + 64)),
    ],
)
def test_the_latent_saves_what_the_real_models_would_cache(config, cached, naive):
    heads = config.num_attention_heads
    kv_b_proj = nn.Linear(
        config.kv_lora_rank,
        heads * (config.qk_nope_head_dim + config.v_head_dim),
        bias=False,
        device="meta",
    )
    mla = LatentAttention(
        kv_b_proj, heads, config.kv_lora_rank, config.qk_nope_head_dim,
        config.qk_rope_head_dim, config.v_head_dim,
    )  # fmt: skip
    assert (mla.cached_lanes, mla.naive_lanes) == (cached, naive)  # 71.1x and 22.2x


class _FakeMLA(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.kv_b_proj = nn.Linear(LORA, HEADS * (NOPE + V), bias=bias)
        self.kv_lora_rank, self.qk_nope_head_dim = LORA, NOPE
        self.qk_rope_head_dim, self.v_head_dim = ROPE, V

    def expand_kv(self, kv_nope, k_rot):
        raise AssertionError("HF's expansion must not run")


def test_install_hands_the_latent_on_and_refuses_a_bias():
    model = nn.Sequential(_FakeMLA(bias=False), nn.Linear(2, 2), _FakeMLA(bias=False))
    assert install_latent_attention(model) == 2
    assert latent_attention_of(model[1]) is None
    assert latent_attention_of(model[0]).num_heads == HEADS
    kv_nope, k_rot = torch.randn(1, 1, 3, LORA), torch.randn(1, 1, 3, ROPE)
    key, value = model[0].expand_kv(kv_nope, k_rot)
    assert torch.equal(key, torch.cat([kv_nope, k_rot], -1)) and torch.equal(value, kv_nope)
    with pytest.raises(Unsupported, match="bias"):
        install_latent_attention(_FakeMLA(bias=True))


def test_mla_code_that_expands_its_own_kv_is_refused(monkeypatch):
    """Should a transformers release stop calling `expand_kv`, the latent path must refuse at
    load time rather than cache expanded heads as if they were the latent."""
    real = transformers_backend.install_latent_attention

    def install_then_undo(model: nn.Module) -> int:
        found = real(model)
        for module in model.modules():
            if latent_attention_of(module) is not None:
                del module.expand_kv  # HF's own method again
        return found

    monkeypatch.setattr(transformers_backend, "install_latent_attention", install_then_undo)
    with pytest.raises(Unsupported, match="did not hand its MLA latent"):
        load_model(str(tiny_model_path("deepseek_v2")))
