"""Text LMs beyond the attention-only families: state-space (Mamba, FalconMamba), hybrids of
attention and Mamba layers (Jamba, Zamba2) and StableLM, whose HF class leaves
`_supports_attention_backend` False although its attention goes through the interface.

Each shares the BPE tokenizer and ChatML template of `text`; weights get the same seeded
rescale, so greedy decoding has clear winners.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gateway.tools.tiny_models.text import LLAMA_ROPE, llama_like, special_ids, text_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, save_checkpoint

SSM_MODELS: tuple[str, ...] = ("mamba", "falcon_mamba")
HYBRID_MODELS: tuple[str, ...] = ("jamba", "zamba2")
BREADTH_MODELS: tuple[str, ...] = (*SSM_MODELS, *HYBRID_MODELS, "stablelm")

# Mamba mixers: 2x expansion of hidden 64, a 4-wide causal conv, 8 state channels.
MAMBA_MIXER = dict(state_size=8, conv_kernel=4, expand=2, time_step_rank=8)


def _mamba_kwargs(vocab_size: int) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(
        hidden_size=64, num_hidden_layers=2, tie_word_embeddings=True, **MAMBA_MIXER
    )


def _jamba_kwargs(vocab_size: int) -> dict[str, Any]:
    # 4 layers: Mamba at 0 and 2, attention at 1 and 3 (HF numbers them globally); MoE at 1, 3
    return llama_like(vocab_size) | dict(
        num_hidden_layers=4,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        num_experts_per_tok=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=8,
    )


def _zamba2_kwargs(vocab_size: int) -> dict[str, Any]:
    # 4 layers: Mamba2 at every layer, the shared attention block before layers 1 and 3
    return special_ids(vocab_size) | dict(
        hidden_size=64,
        num_hidden_layers=4,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        num_attention_heads=4,
        num_key_value_heads=4,
        attention_head_dim=32,
        intermediate_size=128,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_headdim=16,
        mamba_ngroups=1,
        n_mamba_heads=8,
        num_mem_blocks=1,
        use_shared_attention_adapter=True,
        adapter_rank=8,
        use_mem_rope=True,
        max_position_embeddings=512,
        chunk_size=8,
        tie_word_embeddings=False,
    )


def _stablelm_kwargs(vocab_size: int) -> dict[str, Any]:
    return llama_like(vocab_size) | dict(
        partial_rotary_factor=0.25, qk_layernorm=True, rope_parameters=dict(LLAMA_ROPE)
    )


def _config(name: str, vocab_size: int) -> Any:
    import transformers as tf

    configs: dict[str, Callable[[], Any]] = {
        "mamba": lambda: tf.MambaConfig(**_mamba_kwargs(vocab_size)),
        "falcon_mamba": lambda: tf.FalconMambaConfig(**_mamba_kwargs(vocab_size)),
        "jamba": lambda: tf.JambaConfig(**_jamba_kwargs(vocab_size)),
        "zamba2": lambda: tf.Zamba2Config(**_zamba2_kwargs(vocab_size)),
        "stablelm": lambda: tf.StableLmConfig(**_stablelm_kwargs(vocab_size)),
    }
    return configs[name]()


def build_breadth(name: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = text_tokenizer(name)
    config = _config(name, len(tokenizer))
    seed = model_seed(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    finish_lm(model, tokenizer, seed=seed)
    save_checkpoint(out, model, tokenizer)
