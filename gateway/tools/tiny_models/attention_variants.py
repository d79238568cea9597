"""Text LMs whose attention is not plain MHA/GQA with rotary: ALiBi (Bloom, MPT, Falcon-RW),
Falcon's rotary layouts (multi-query; the new decoder architecture's grouped KV heads) and MLA
(DeepSeek-V2 with a plain q_proj as in V2-Lite, DeepSeek-V3 with MoE layers, MiniCPM3).

Each shares the BPE tokenizer and ChatML template of `text`; weights get the same seeded
rescale, so greedy decoding has clear winners. MLA models get a V head dim different from the
Q/K head dim, as the real ones have (192 vs 128 for DeepSeek).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gateway.tools.tiny_models.text import llama_like, special_ids, text_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, save_checkpoint

# builder name -> the seed row it proves
ATTENTION_VARIANT_ARCHITECTURES: dict[str, str] = {
    "bloom": "BloomForCausalLM",
    "mpt": "MPTForCausalLM",
    "falcon": "FalconForCausalLM",  # falcon-7b: rotary, multi-query, parallel attention
    "falcon_40b": "FalconForCausalLM",  # new decoder architecture: 2 KV heads for 4
    "falcon_rw": "FalconForCausalLM",  # ALiBi, MHA, sequential attention and MLP, biases
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "minicpm3": "MiniCPM3ForCausalLM",
}
ALIBI_MODELS: tuple[str, ...] = ("bloom", "mpt", "falcon", "falcon_40b", "falcon_rw")
MLA_MODELS: tuple[str, ...] = ("deepseek_v2", "deepseek_v3", "minicpm3")
ATTENTION_VARIANT_MODELS: tuple[str, ...] = (*ALIBI_MODELS, *MLA_MODELS)

# MLA: a 32-lane latent plus an 8-lane rotary key; heads of 16 + 8 (Q/K) and 24 (V)
MLA_DIMS = dict(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=24)
DEEPSEEK_MOE = dict(
    moe_intermediate_size=32,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    first_k_dense_replace=1,  # layer 0 dense, layer 1 MoE
    n_group=1,
    topk_group=1,
)


def _falcon_kwargs(vocab_size: int, **variant: Any) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, **variant
    )


def _configs(vocab_size: int) -> dict[str, Callable[[], Any]]:
    import transformers as tf

    mla = llama_like(vocab_size, num_key_value_heads=4) | MLA_DIMS
    return {
        "bloom": lambda: tf.BloomConfig(
            **special_ids(vocab_size), hidden_size=64, n_layer=2, n_head=4
        ),
        "mpt": lambda: tf.MptConfig(
            **special_ids(vocab_size),
            d_model=64,
            n_heads=4,
            n_layers=2,
            expansion_ratio=2,
            max_seq_len=512,
            attn_config={"alibi": True, "alibi_bias_max": 8, "clip_qkv": 6.0},
        ),  # fmt: skip
        "falcon": lambda: tf.FalconConfig(
            **_falcon_kwargs(vocab_size, multi_query=True, parallel_attn=True, bias=False)
        ),
        "falcon_40b": lambda: tf.FalconConfig(
            **_falcon_kwargs(
                vocab_size, new_decoder_architecture=True, num_kv_heads=2, parallel_attn=True
            )
        ),
        "falcon_rw": lambda: tf.FalconConfig(
            **_falcon_kwargs(
                vocab_size, alibi=True, multi_query=False, parallel_attn=False, bias=True
            )
        ),
        "deepseek_v2": lambda: tf.DeepseekV2Config(**mla, **DEEPSEEK_MOE, q_lora_rank=None),
        "deepseek_v3": lambda: tf.DeepseekV3Config(**mla, **DEEPSEEK_MOE, q_lora_rank=48),
        "minicpm3": lambda: tf.MiniCPM3Config(**mla, q_lora_rank=48),
    }


def build_attention_variant(name: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = text_tokenizer(name)
    config = _configs(len(tokenizer))[name]()
    seed = model_seed(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    finish_lm(model, tokenizer, seed=seed)
    save_checkpoint(out, model, tokenizer)
