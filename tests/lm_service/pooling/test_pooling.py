"""Pooling models (embed, classify, score, reward) against Hugging Face run one input at a time.

Our side runs padded, length-sorted batches; HF's reference runs each input alone, so padding,
masks and the per-input pooling position are all checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from gateway.tools.tiny_models import minilm_path, tiny_model_path
from lm_service.pooling import (
    PoolerConfig,
    PoolingConfig,
    PoolingModel,
    PoolingType,
    parse_pooler_overrides,
    parse_pooling_task,
    resolve_pooler_config,
    sentence_transformers_pooling,
)
from protos.errors import InvalidRequest, Unsupported
from protos.lm_codec import pool_inputs_from_pb, pool_request_to_pb, pooling_task_from_pb
from protos.lm_messages import PoolingInput
from protos.tasks import POOLING_TASKS, Task

ATOL = 1e-5
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread with butter and a glass of milk in the kitchen.",
    "The baby is carried by the woman.",
    "hi",
]
PAIRS = [
    ("what is the capital of france", "paris is the capital of france"),
    ("how old is the baby", "the cat sleeps on the warm kitchen floor all afternoon"),
    ("a", "b"),
]


def _inputs(tokenizer: object, texts: list[str]) -> list[PoolingInput]:
    out = []
    for text in texts:
        enc = tokenizer(text)
        types = enc.get("token_type_ids")
        out.append(PoolingInput(tuple(enc["input_ids"]), tuple(types) if types else None))
    return out


def _pair_inputs(tokenizer: object, pairs: list[tuple[str, str]]) -> list[PoolingInput]:
    encs = [tokenizer(a, b) for a, b in pairs]
    return [PoolingInput(tuple(e["input_ids"]), tuple(e["token_type_ids"])) for e in encs]


def _load(path: Path, task: str, **kwargs: object) -> PoolingModel:
    return PoolingModel.from_config(PoolingConfig(model=str(path), task=task, **kwargs))


@pytest.fixture(scope="module")
def minilm() -> Iterator[PoolingModel]:
    model = _load(minilm_path(), "embed")
    yield model
    model.close()


# ----------------------------------------------------------------------------- embed


@pytest.mark.seed_row("BertModel", "embed")
def test_minilm_matches_sentence_transformers_recipe(minilm: PoolingModel) -> None:
    path = minilm_path()
    assert minilm.pooler_config == PoolerConfig(PoolingType.MEAN, normalize=True)
    assert minilm.max_model_len == 256  # sentence_bert_config.json caps the 512 positions
    tokenizer = AutoTokenizer.from_pretrained(path)
    ours = minilm.pool("embed", _inputs(tokenizer, TEXTS))
    hf = AutoModel.from_pretrained(path).eval()
    for text, vector in zip(TEXTS, ours, strict=True):
        with torch.no_grad():
            hidden = hf(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]  # [T, H]
        expected = F.normalize(hidden.mean(dim=0), dim=-1)
        assert vector.shape == (384,) and vector.dtype == torch.float32
        torch.testing.assert_close(vector, expected, atol=ATOL, rtol=0)
    food, bread, baby = ours[:3]
    assert float(food @ bread) > float(food @ baby) + 0.2


def test_batching_does_not_change_results(minilm: PoolingModel) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    inputs = _inputs(tokenizer, TEXTS)
    together = minilm.run(inputs)
    alone = [minilm.run([item])[0] for item in inputs]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    small = _load(minilm_path(), "embed", max_num_batched_tokens=8)  # one input per forward
    assert len(small._chunks(sorted(inputs, key=lambda i: len(i.token_ids)))) == len(inputs)
    for a, b in zip(small.run(inputs), together, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_tiny_bert_defaults_to_cls_and_override_changes_it() -> None:
    path = tiny_model_path("bert")
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModel.from_pretrained(path).eval()
    inputs = _inputs(tokenizer, TEXTS)
    cls_model = _load(path, "embed")
    assert cls_model.pooler_config == PoolerConfig(PoolingType.CLS, normalize=True)
    mean_model = _load(
        path, "embed", override_pooler_config='{"pooling_type": "mean", "normalize": false}'
    )
    cls_out, mean_out = cls_model.pool("embed", inputs), mean_model.pool("embed", inputs)
    for text, cls_vec, mean_vec in zip(TEXTS, cls_out, mean_out, strict=True):
        with torch.no_grad():
            hidden = hf(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        torch.testing.assert_close(cls_vec, F.normalize(hidden[0], dim=-1), atol=ATOL, rtol=0)
        torch.testing.assert_close(mean_vec, hidden.mean(dim=0), atol=ATOL, rtol=0)
        assert not torch.allclose(cls_vec, mean_vec, atol=1e-3)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("qwen2", marks=pytest.mark.seed_row("Qwen2ForCausalLM", "embed")),
        pytest.param("llama", marks=pytest.mark.seed_row("LlamaForCausalLM", "embed")),
    ],
)
def test_decoder_embeddings_pool_the_last_token(name: str) -> None:
    path = tiny_model_path(name)  # a ForCausalLM checkpoint: AutoModel drops the LM head
    model = _load(path, "embed")
    assert model.pooler_config == PoolerConfig(PoolingType.LAST, normalize=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModel.from_pretrained(path).eval()
    for text, vector in zip(TEXTS, model.pool("embed", _inputs(tokenizer, TEXTS)), strict=True):
        with torch.no_grad():
            hidden = hf(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        torch.testing.assert_close(vector, F.normalize(hidden[-1], dim=-1), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- classify / score


def test_bert_classifier_probs_equal_hf_softmax() -> None:
    path = tiny_model_path("bert_cls")
    model = _load(path, "classify")
    assert model.pooler_config == PoolerConfig(PoolingType.CLS, softmax=True)
    assert model.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for text, probs in zip(TEXTS, model.pool("classify", _inputs(tokenizer, TEXTS)), strict=True):
        with torch.no_grad():
            expected = hf(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        assert probs.shape == (3,)
        torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)


@pytest.mark.seed_row("Qwen2ForSequenceClassification", "classify")
def test_qwen2_classifier_pools_last_real_token_under_padding() -> None:
    path = tiny_model_path("qwen2_cls")
    model = _load(path, "classify")
    assert model.pooler_config.pooling_type is PoolingType.LAST
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    outputs = model.pool("classify", _inputs(tokenizer, TEXTS))  # lengths differ: right padding
    for text, probs in zip(TEXTS, outputs, strict=True):
        with torch.no_grad():
            expected = hf(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)
    raw = _load(path, "classify", override_pooler_config={"softmax": False})
    logits = raw.pool("classify", _inputs(tokenizer, TEXTS[:1]))[0]
    torch.testing.assert_close(logits.softmax(-1), outputs[0], atol=ATOL, rtol=0)


@pytest.mark.seed_row("BertForSequenceClassification", "score")
def test_cross_encoder_scores_pairs_with_token_types() -> None:
    path = tiny_model_path("bert_cls")
    model = _load(path, "score")
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = _pair_inputs(tokenizer, PAIRS)
    assert 1 in inputs[0].token_type_ids  # the second segment is marked
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for (a, b), score in zip(PAIRS, model.pool("score", inputs), strict=True):
        with torch.no_grad():
            logits = hf(**tokenizer(a, b, return_tensors="pt")).logits[0]  # [3]
        assert score.shape == (1,)
        # three labels: the score is P(last label)
        torch.testing.assert_close(score[0], logits.softmax(-1)[-1], atol=ATOL, rtol=0)
    without_types = [PoolingInput(i.token_ids) for i in inputs]
    assert not torch.allclose(model.pool("score", without_types)[0], model.run(inputs)[0])


def test_score_and_classify_need_a_classification_head() -> None:
    with pytest.raises(Unsupported, match="--task embed"):
        _load(tiny_model_path("bert"), "score")
    with pytest.raises(Unsupported, match="ForSequenceClassification"):
        _load(tiny_model_path("bert"), "classify")


# ----------------------------------------------------------------------------- reward


def test_reward_defaults_to_per_token_head_outputs() -> None:
    path = tiny_model_path("qwen2_cls")
    model = _load(path, "reward")
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for text, rows in zip(TEXTS, model.pool("reward", _inputs(tokenizer, TEXTS)), strict=True):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = hf.score(hf.model(ids).last_hidden_state)[0]  # [T, 2]
        assert rows.shape == (ids.shape[1], 2)
        torch.testing.assert_close(rows, expected, atol=ATOL, rtol=0)


@pytest.mark.seed_row("LlamaForCausalLM", "reward")
def test_step_reward_reads_lm_head_at_step_tags() -> None:
    path = tiny_model_path("llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = "step one. step two. done."
    ids = tokenizer(text)["input_ids"]
    tag = ids[3]
    returned = [10, 11]
    overrides = {
        "pooling_type": "STEP",
        "step_tag_id": tag,
        "returned_token_ids": returned,
        "softmax": True,
    }
    model = _load(path, "reward", override_pooler_config=overrides)
    (rows,) = model.pool("reward", [PoolingInput(tuple(ids))])
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0]  # [T, V]
    positions = [i for i, t in enumerate(ids) if t == tag]
    expected = logits[positions][:, returned].softmax(-1)
    assert rows.shape == (len(positions), 2)
    torch.testing.assert_close(rows, expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- config, errors


def test_sentence_transformers_config_is_read(tmp_path: Path) -> None:
    assert sentence_transformers_pooling(minilm_path()) == {
        "pooling_type": PoolingType.MEAN,
        "normalize": True,
    }
    assert sentence_transformers_pooling(tmp_path) is None


def test_pooler_overrides_are_validated() -> None:
    parsed = parse_pooler_overrides('{"pooling_type": "last", "normalize": false}')
    assert parsed == {"pooling_type": PoolingType.LAST, "normalize": False}
    assert parse_pooler_overrides(parsed) == parsed
    with pytest.raises(InvalidRequest, match="unknown key"):
        parse_pooler_overrides({"pooling": "MEAN"})
    with pytest.raises(InvalidRequest, match="pooling_type must be one of"):
        parse_pooler_overrides({"pooling_type": "MAX"})
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_pooler_overrides("{pooling_type: MEAN}")
    with pytest.raises(InvalidRequest, match="normalize must be true or false"):
        parse_pooler_overrides({"normalize": "yes"})
    with pytest.raises(InvalidRequest, match="step_tag_id"):
        PoolerConfig(PoolingType.STEP)


def test_pooling_tasks_are_the_mesh_wide_ones() -> None:
    assert (
        parse_pooling_task("score") is Task.SCORE and parse_pooling_task(Task.EMBED) is Task.EMBED
    )
    assert POOLING_TASKS == ("embed", "classify", "score", "reward")  # gateway compares names
    sentence = "unknown pooling task 'generate'; expected one of embed, classify, score, reward"
    with pytest.raises(InvalidRequest, match=sentence):
        PoolingConfig(model="unused", task="generate")
    with pytest.raises(InvalidRequest, match=sentence):
        parse_pooling_task(Task.GENERATE)


def test_per_token_pooling_is_for_reward_only() -> None:
    all_tokens = {"pooling_type": PoolingType.ALL}
    with pytest.raises(InvalidRequest, match="reward"):
        resolve_pooler_config(Task.EMBED, PoolingType.CLS, None, all_tokens)
    config = resolve_pooler_config(Task.REWARD, PoolingType.LAST, None, {})
    assert config == PoolerConfig(PoolingType.ALL)
    embed = resolve_pooler_config(Task.EMBED, PoolingType.LAST, None, {})
    assert embed == PoolerConfig(PoolingType.LAST, normalize=True)  # decoders: last, normalized


def test_bad_inputs_and_wrong_task_are_refused(minilm: PoolingModel) -> None:
    with pytest.raises(Unsupported, match="'embed' task; 'classify' needs an LM started"):
        minilm.pool("classify", [PoolingInput((101, 102))])
    with pytest.raises(InvalidRequest, match="at least one input"):
        minilm.pool("embed", [])
    with pytest.raises(InvalidRequest, match="input 1 has no tokens"):
        minilm.pool("embed", [PoolingInput((101,)), PoolingInput(())])
    with pytest.raises(InvalidRequest, match="at most 256"):
        minilm.pool("embed", [PoolingInput((101,) * 257)])
    with pytest.raises(InvalidRequest, match="vocabulary has 30522"):
        minilm.pool("embed", [PoolingInput((101, 40000))])
    with pytest.raises(InvalidRequest, match="2 token ids but 1 token type ids"):
        minilm.pool("embed", [PoolingInput((101, 102), (0,))])


def test_pool_messages_round_trip() -> None:
    inputs = [PoolingInput((2, 5, 3), (0, 0, 1)), PoolingInput((7,))]
    message = pool_request_to_pb("score", inputs)
    assert pooling_task_from_pb(message.task) == "score"
    assert pool_inputs_from_pb(message.inputs) == inputs
    with pytest.raises(InvalidRequest, match="needs a task"):
        pooling_task_from_pb(0)
