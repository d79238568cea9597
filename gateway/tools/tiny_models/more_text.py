"""More text-generate rows of the seed that transformers implements and the Transformers
fallback runs: one tiny config per family, the shared BPE tokenizer, seeded weights.

Each name is the model_type-like key the builders registry uses; `MORE_TEXT_ARCHITECTURES`
maps it to the seed row it proves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gateway.tools.tiny_models.text import llama_like, special_ids, text_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, save_checkpoint

MORE_TEXT_ARCHITECTURES: dict[str, str] = {
    "cohere": "CohereForCausalLM",
    "cohere2": "Cohere2ForCausalLM",
    "dbrx": "DbrxForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "glm": "GlmForCausalLM",
    "gpt_bigcode": "GPTBigCodeForCausalLM",
    "gptj": "GPTJForCausalLM",
    "granite": "GraniteForCausalLM",
    "granitemoe": "GraniteMoeForCausalLM",
    "granitemoeshared": "GraniteMoeSharedForCausalLM",
    "nemotron": "NemotronForCausalLM",
    "olmo": "OLMoForCausalLM",
    "olmo2": "OLMo2ForCausalLM",
    "olmoe": "OLMoEForCausalLM",
    "phi": "PhiForCausalLM",
    "phimoe": "PhiMoEForCausalLM",
    "persimmon": "PersimmonForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
}
MORE_TEXT_MODELS: tuple[str, ...] = tuple(MORE_TEXT_ARCHITECTURES)
# Gemma-style models scale tied embeddings by sqrt(hidden): a large init saturates them
SMALL_EMBEDDING_MODELS = frozenset({"gemma", "gemma3_text"})
GRANITE_SCALES = dict(
    embedding_multiplier=2.0, logits_scaling=2.0, residual_multiplier=0.5, attention_multiplier=0.25
)


def _gpt_style(vocab_size: int) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)


def _small_dense(vocab_size: int) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )


def _configs(vocab_size: int) -> dict[str, Callable[[], Any]]:
    import transformers as tf

    llama = llama_like(vocab_size)
    moe = dict(num_local_experts=4, num_experts_per_tok=2)
    return {
        "cohere": lambda: tf.CohereConfig(**llama),
        "cohere2": lambda: tf.Cohere2Config(**llama, sliding_window=4),
        "dbrx": lambda: tf.DbrxConfig(**_dbrx_kwargs(vocab_size)),
        "gemma": lambda: tf.GemmaConfig(**llama | dict(head_dim=16, tie_word_embeddings=True)),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**_gemma3_kwargs(llama)),
        "glm": lambda: tf.GlmConfig(**llama, head_dim=16, partial_rotary_factor=0.5),
        "gpt_bigcode": lambda: tf.GPTBigCodeConfig(**_gpt_style(vocab_size), n_inner=128),
        "gptj": lambda: tf.GPTJConfig(
            **_gpt_style(vocab_size), rotary_dim=8, n_inner=128, tie_word_embeddings=False
        ),
        "granite": lambda: tf.GraniteConfig(**llama, **GRANITE_SCALES),
        "granitemoe": lambda: tf.GraniteMoeConfig(**llama, **moe, **GRANITE_SCALES),
        "granitemoeshared": lambda: tf.GraniteMoeSharedConfig(
            **llama, **moe, **GRANITE_SCALES, shared_intermediate_size=64
        ),
        "nemotron": lambda: tf.NemotronConfig(**llama, partial_rotary_factor=0.5),
        "olmo": lambda: tf.OlmoConfig(**llama),
        "olmo2": lambda: tf.Olmo2Config(**llama),
        "olmoe": lambda: tf.OlmoeConfig(**llama, num_experts=4, num_experts_per_tok=2),
        "phi": lambda: tf.PhiConfig(
            **_small_dense(vocab_size), num_key_value_heads=2, partial_rotary_factor=0.5
        ),
        "phimoe": lambda: tf.PhimoeConfig(**llama, **moe),
        "persimmon": lambda: tf.PersimmonConfig(
            **_small_dense(vocab_size), partial_rotary_factor=0.5, qk_layernorm=True
        ),
        "starcoder2": lambda: tf.Starcoder2Config(**llama),
    }


def _dbrx_kwargs(vocab_size: int) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(
        d_model=64,
        n_heads=4,
        n_layers=2,
        max_seq_len=512,
        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2},
        tie_word_embeddings=False,
    )


def _gemma3_kwargs(llama: dict[str, Any]) -> dict[str, Any]:
    return llama | dict(
        head_dim=16, query_pre_attn_scalar=16, sliding_window=8, tie_word_embeddings=True
    )


def build_more_text(name: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = text_tokenizer(name)
    config = _configs(len(tokenizer))[name]()
    seed = model_seed(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    emb_std = 0.02 if name in SMALL_EMBEDDING_MODELS else None
    finish_lm(model, tokenizer, seed=seed, emb_std=emb_std)
    save_checkpoint(out, model, tokenizer)
