"""The bench models: Qwen2-0.5B-shaped random weights with a real (tiny) tokenizer.

The full 151936-row vocabulary is kept, so the LM head costs what it costs in the real model,
but the embedding rows past the tokenizer's own vocabulary are scaled down: with tied weights
their logits stay near 0, greedy decoding picks tokens the tokenizer can decode, and the
gateway detokenizes real text rather than skipping unknown ids.
"""

from __future__ import annotations

from pathlib import Path

import torch

QWEN2_0_5B_VOCAB = 151936
OUT_OF_TOKENIZER_SCALE = 1e-3  # logits of undecodable ids ~1e-3 of the real ones


def build_qwen2_shaped(out: Path, layers: int, dtype: str, vocab: int = QWEN2_0_5B_VOCAB) -> Path:
    """Saves the model and the tiny Qwen2 tokenizer into `out`; returns `out`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from gateway.tools.tiny_models.text import text_tokenizer

    tokenizer = text_tokenizer("qwen2")
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[len(tokenizer) :] *= OUT_OF_TOKENIZER_SCALE
    model = model.to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
