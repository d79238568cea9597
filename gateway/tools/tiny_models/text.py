"""Causal text LMs: one config per family (Llama, Mistral, Qwen2, Gemma 2, Phi-3, GPT-2, OPT,
GPT-NeoX, Qwen2-MoE, Mixtral), each with the shared BPE tokenizer and ChatML template."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TokenizerSpec,
    build_bpe_tokenizer,
)
from gateway.tools.tiny_models.weights import finish_lm, model_seed, save_checkpoint

TEXT_MODELS: tuple[str, ...] = (
    "llama",
    "mistral",
    "mistral_swa",
    "qwen2",
    "gemma2",
    "phi3",
    "gpt2",
    "opt",
    "gpt_neox",
    "qwen2_moe",
    "mixtral",
)
LLAMA_FAMILY: tuple[str, ...] = ("llama", "mistral", "qwen2")
LLAMA_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1000000.0}


def llama_like(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    return base | overrides


def special_ids(vocab_size: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )


def _text_config(name: str, vocab_size: int) -> Any:
    import transformers as tf

    llama = llama_like(vocab_size, rope_parameters=dict(LLAMA_ROPE))
    qwen = llama_like(vocab_size, rope_parameters=dict(QWEN_ROPE))
    configs: dict[str, Callable[[], Any]] = {
        "llama": lambda: tf.LlamaConfig(**llama),
        "mistral": lambda: tf.MistralConfig(**llama, sliding_window=None),
        "mistral_swa": lambda: tf.MistralConfig(**llama, sliding_window=4),
        "qwen2": lambda: tf.Qwen2Config(**qwen),
        "gemma2": lambda: tf.Gemma2Config(**_gemma2_kwargs(llama)),
        "phi3": lambda: tf.Phi3Config(**llama, original_max_position_embeddings=512),
        "gpt2": lambda: tf.GPT2Config(**_gpt2_kwargs(vocab_size)),
        "opt": lambda: tf.OPTConfig(**_opt_kwargs(vocab_size)),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**_gpt_neox_kwargs(vocab_size)),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**qwen, **_qwen2_moe_kwargs()),
        "mixtral": lambda: tf.MixtralConfig(**llama, num_local_experts=4, num_experts_per_tok=2),
    }
    return configs[name]()


def _gemma2_kwargs(llama: dict[str, Any]) -> dict[str, Any]:
    return llama | dict(
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        tie_word_embeddings=True,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    )


def _gpt2_kwargs(vocab_size: int) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(
        n_embd=64, n_layer=2, n_head=4, n_positions=512, n_inner=128, tie_word_embeddings=True
    )


def _opt_kwargs(vocab_size: int) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        word_embed_proj_dim=64,
        dropout=0.0,
        tie_word_embeddings=True,
    )


def _gpt_neox_kwargs(vocab_size: int) -> dict[str, Any]:
    return special_ids(vocab_size) | dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )


def _qwen2_moe_kwargs() -> dict[str, Any]:
    return dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=False,
    )


# Qwen-family and GPT-style tokenizers add no BOS; Llama-style ones prepend <s>.
NO_BOS_MODELS = frozenset({"qwen2", "qwen2_moe", "gpt2", "gpt_neox", "qwen2_cls"})


def text_tokenizer(name: str) -> Any:
    add_bos = name not in NO_BOS_MODELS
    return build_bpe_tokenizer(TokenizerSpec(add_bos=add_bos), build_chat_template(bos=add_bos))


def build_text(name: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = text_tokenizer(name)
    config = _text_config(name, len(tokenizer))
    seed = model_seed(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    finish_lm(model, tokenizer, seed=seed, emb_std=0.02 if name == "gemma2" else None)
    save_checkpoint(out, model, tokenizer)
