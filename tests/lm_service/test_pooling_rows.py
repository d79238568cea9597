"""Pooling rows of the seed beyond BERT and Qwen2: RoBERTa and XLM-RoBERTa (embed, score),
Gemma 2 (embed) and Jamba (classify) on tiny checkpoints built here, each equal to HF run one
input at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from gateway.tools.tiny_models import BOS_ID, EOS_ID, PAD_ID, rescale_init, tiny_model_path
from gateway.tools.tiny_models.breadth import _jamba_kwargs
from gateway.tools.tiny_models.text import text_tokenizer
from lm_service.pooling import PoolingConfig, PoolingModel, PoolingType
from protos.lm_messages import PoolingInput

ATOL = 1e-5
TEXTS = ["A man is eating food.", "The baby is carried by the woman in the kitchen.", "hi"]
PAIRS = [("what is the capital", "paris is the capital"), ("a", "the cat sleeps on the floor")]


def _encoder_config(kind: str, vocab_size: int, **extra: object) -> object:
    import transformers as tf

    config_class = {"roberta": tf.RobertaConfig, "xlm_roberta": tf.XLMRobertaConfig}[kind]
    return config_class(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        type_vocab_size=1,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        **extra,
    )


def _save(out: Path, model: torch.nn.Module, tokenizer: object, seed: int) -> Path:
    rescale_init(model, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _builders(tokenizer: object) -> dict[str, Callable[[Path], Path]]:
    import transformers as tf

    vocab = len(tokenizer)

    def encoder(kind: str, model_class: type, **extra: object) -> Callable[[Path], Path]:
        return lambda out: _save(
            out, model_class(_encoder_config(kind, vocab, **extra)), tokenizer, 7
        )

    def gemma2(out: Path) -> Path:  # a Gemma2Model checkpoint (bge-multilingual-gemma2's class)
        model = tf.Gemma2Model.from_pretrained(tiny_model_path("gemma2"))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_model_path("gemma2")).save_pretrained(out)
        return out

    def jamba_cls(out: Path) -> Path:
        config = tf.JambaConfig(**_jamba_kwargs(vocab), num_labels=2)
        return _save(out, tf.JambaForSequenceClassification(config), tokenizer, 9)

    return {
        "roberta": encoder("roberta", tf.RobertaModel, add_pooling_layer=False),
        "xlm_roberta": encoder("xlm_roberta", tf.XLMRobertaModel, add_pooling_layer=False),
        "roberta_cls": encoder("roberta", tf.RobertaForSequenceClassification, num_labels=1),
        "xlm_roberta_cls": encoder(
            "xlm_roberta", tf.XLMRobertaForSequenceClassification, num_labels=1
        ),
        "gemma2_model": gemma2,
        "jamba_cls": jamba_cls,
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("pooling_rows")
    builders = _builders(text_tokenizer("llama"))
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = builders[name](root / name)
        return built[name]

    return get


def _load(path: Path, task: str) -> PoolingModel:
    return PoolingModel.from_config(PoolingConfig(model=str(path), task=task))


def _ids(tokenizer: object, *texts: str) -> list[int]:
    return list(tokenizer(*texts)["input_ids"])


def _pooled(hidden: torch.Tensor, pooling: PoolingType) -> torch.Tensor:
    """hidden [L, H] of one input -> [H] as the pooler's type says."""
    return {PoolingType.CLS: hidden[0], PoolingType.LAST: hidden[-1]}.get(
        pooling, hidden.mean(dim=0)
    )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("roberta", marks=pytest.mark.seed_row("RobertaModel", "embed")),
        pytest.param("xlm_roberta", marks=pytest.mark.seed_row("XLMRobertaModel", "embed")),
        pytest.param("gemma2_model", marks=pytest.mark.seed_row("Gemma2Model", "embed")),
    ],
)
def test_embeddings_equal_hf(name: str, checkpoints: Callable[[str], Path]) -> None:
    path = checkpoints(name)
    model = _load(path, "embed")
    config = model.pooler_config
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModel.from_pretrained(path).eval()
    inputs = [PoolingInput(tuple(_ids(tokenizer, text))) for text in TEXTS]
    for item, vector in zip(inputs, model.pool("embed", inputs), strict=True):
        with torch.no_grad():
            hidden = hf(torch.tensor([item.token_ids])).last_hidden_state[0]
        expected = _pooled(hidden, config.pooling_type)
        expected = F.normalize(expected, dim=-1) if config.normalize else expected
        torch.testing.assert_close(vector, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            "roberta_cls", marks=pytest.mark.seed_row("RobertaForSequenceClassification", "score")
        ),
        pytest.param(
            "xlm_roberta_cls",
            marks=pytest.mark.seed_row("XLMRobertaForSequenceClassification", "score"),
        ),
    ],
)
def test_cross_encoder_scores_equal_hf(name: str, checkpoints: Callable[[str], Path]) -> None:
    path = checkpoints(name)
    model = _load(path, "score")
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    inputs = [PoolingInput(tuple(_ids(tokenizer, a, b))) for a, b in PAIRS]
    for item, score in zip(inputs, model.pool("score", inputs), strict=True):
        with torch.no_grad():
            logit = hf(torch.tensor([item.token_ids])).logits[0]  # [1]
        torch.testing.assert_close(score, logit.sigmoid(), atol=ATOL, rtol=0)


@pytest.mark.seed_row("JambaForSequenceClassification", "classify")
def test_jamba_classifier_equals_hf(checkpoints: Callable[[str], Path]) -> None:
    path = checkpoints("jamba_cls")
    model = _load(path, "classify")
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    inputs = [PoolingInput(tuple(_ids(tokenizer, text))) for text in TEXTS]  # padded batch
    for item, probs in zip(inputs, model.pool("classify", inputs), strict=True):
        with torch.no_grad():
            expected = hf(torch.tensor([item.token_ids])).logits[0].softmax(-1)
        torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)
