"""Embedding and classification models: tiny BERT, BERT and Qwen2 sequence classifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.text import QWEN_ROPE, llama_like, text_tokenizer
from gateway.tools.tiny_models.tokenizer import BERT_MAX_POSITIONS, build_wordpiece_tokenizer
from gateway.tools.tiny_models.weights import model_seed, new_model, rescale_init, save_checkpoint


def _bert_config(vocab_size: int, **extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=BERT_MAX_POSITIONS,
        pad_token_id=0,
        **extra,
    )


def build_bert(name: str, out: Path) -> None:
    from transformers import BertForSequenceClassification, BertModel

    tokenizer = build_wordpiece_tokenizer()
    seed = model_seed(name)
    if name == "bert":
        model = new_model(BertModel, _bert_config(len(tokenizer)), seed)
    else:
        labels = {0: "negative", 1: "neutral", 2: "positive"}
        config = _bert_config(len(tokenizer), num_labels=3, id2label=labels)
        model = new_model(BertForSequenceClassification, config, seed)
    rescale_init(model, seed)
    save_checkpoint(out, model, tokenizer)


def build_qwen2_cls(out: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = text_tokenizer("qwen2_cls")
    labels = {0: "negative", 1: "positive"}
    config = Qwen2Config(
        **llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE)),
        num_labels=2,
        id2label=labels,
    )
    seed = model_seed("qwen2_cls")
    model = new_model(Qwen2ForSequenceClassification, config, seed)
    rescale_init(model, seed)
    save_checkpoint(out, model, tokenizer)
