"""Pooling through the gateway: the offline LLM's encode / embed / classify / score, and
`meshserve lm --task embed` + `meshserve gateway --task embed` as real processes over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from gateway import LLM
from gateway.app import check_lm_task, served_model
from gateway.backends.base import LMInfo
from gateway.backends.local import LocalLMBackend
from gateway.pipeline.pooling import PoolingOrchestrator
from gateway.tools.tiny_models import minilm_path, tiny_model_path
from lm_service.pooling import PoolingConfig, PoolingModel
from protos.channels import channel
from protos.errors import InvalidRequest, Unsupported
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, lm_pb2, lm_pb2_grpc
from tests.services import start_many

ATOL = 1e-5
TEXTS = ["A man is eating food.", "A man is eating bread.", "The baby is carried by the woman."]


@pytest.fixture(scope="module")
def minilm_llm() -> Iterator[LLM]:
    llm = LLM(model=str(minilm_path()), task="embed")
    yield llm
    llm.close()


# ----------------------------------------------------------------------------- offline


def test_offline_embed_encode_and_cosine_score(minilm_llm: LLM) -> None:
    outputs = minilm_llm.embed(TEXTS)
    assert [o.outputs.hidden_size for o in outputs] == [384, 384, 384]
    vectors = torch.tensor([o.outputs.embedding for o in outputs])  # [3, 384]
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    encoded = minilm_llm.encode(TEXTS[0])
    assert encoded[0].prompt_token_ids == outputs[0].prompt_token_ids
    torch.testing.assert_close(encoded[0].outputs.data, vectors[0], atol=ATOL, rtol=0)
    scores = [o.outputs.score for o in minilm_llm.score(TEXTS[0], TEXTS[1:])]
    expected = [float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])]
    assert scores == pytest.approx(expected, abs=1e-5)
    ids = minilm_llm.embed({"prompt_token_ids": list(outputs[1].prompt_token_ids)})
    assert ids[0].outputs.embedding == pytest.approx(outputs[1].outputs.embedding, abs=ATOL)


def test_offline_task_mismatches_say_what_to_do(minilm_llm: LLM) -> None:
    with pytest.raises(Unsupported, match="LLM\\(task='embed'\\) cannot generate"):
        minilm_llm.generate("hello")
    with pytest.raises(Unsupported, match="create the LLM with task='classify'"):
        minilm_llm.classify("hello")
    with pytest.raises(InvalidRequest, match="at least one input"):
        minilm_llm.embed([])
    with pytest.raises(InvalidRequest, match=r"^input 0: BertModel accepts T: image is not"):
        minilm_llm.embed({"prompt": "x", "multi_modal_data": {"image": b"..."}})
    with pytest.raises(Unsupported, match="needs a speech-to-text model"):
        LLM(model=str(minilm_path()), task="transcription")


def test_offline_classify_and_cross_encoder_score_equal_hf() -> None:
    path = tiny_model_path("bert_cls")
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    classifier = LLM(model=str(path), task="classify")
    try:
        probs = [o.outputs.probs for o in classifier.classify(TEXTS)]
    finally:
        classifier.close()
    scorer = LLM(model=str(path), task="score")
    try:
        scores = [o.outputs.score for o in scorer.score(TEXTS[0], TEXTS[1:])]
        pair_ids = scorer.score([TEXTS[1]], [TEXTS[2]])[0].prompt_token_ids
    finally:
        scorer.close()
    with torch.no_grad():
        for text, got in zip(TEXTS, probs, strict=True):
            logits = hf(**tokenizer(text, return_tensors="pt")).logits[0]
            assert got == pytest.approx(logits.softmax(-1).tolist(), abs=ATOL)
        for text_2, got in zip(TEXTS[1:], scores, strict=True):
            logits = hf(**tokenizer(TEXTS[0], text_2, return_tensors="pt")).logits[0]
            assert got == pytest.approx(float(logits.softmax(-1)[-1]), abs=ATOL)
    assert list(pair_ids) == tokenizer(TEXTS[1], TEXTS[2])["input_ids"]


def test_classify_names_the_label() -> None:
    path = tiny_model_path("qwen2_cls")
    served = served_model(str(path), "classify")
    model = PoolingModel.from_config(PoolingConfig(model=str(path), task="classify"))
    pooling = PoolingOrchestrator(
        served, AutoTokenizer.from_pretrained(path), LocalLMBackend(pooling=model), model.id2label
    )
    results, pooled = asyncio.run(pooling.classify(TEXTS, None))
    model.close()
    for result in results:
        assert result.label_index == max(range(2), key=lambda i: result.probs[i])
        assert result.label == ("negative", "positive")[result.label_index]
    assert pooled.usage.prompt_tokens == sum(len(o.prompt_token_ids) for o in pooled.outputs)
    with pytest.raises(Unsupported, match="'classify' task; 'embed' is not available"):
        asyncio.run(pooling.embed(TEXTS, None, None))
    scorer = PoolingOrchestrator(replace(served, task="score"), None, LocalLMBackend())
    with pytest.raises(InvalidRequest, match="give one text_1, or as many as text_2"):
        asyncio.run(scorer.score(["a", "b"], ["c", "d", "e"], None))


def test_gateway_refuses_an_lm_of_another_task() -> None:
    served = served_model(str(minilm_path()), "embed")
    info = LMInfo("BertModel", "transformers", 256, 384, 30522, False, 0, 0, tasks=("generate",))
    with pytest.raises(Unsupported, match="start both with the same --task"):
        check_lm_task(served, info)
    check_lm_task(served, replace(info, tasks=("embed",)))


# ----------------------------------------------------------------------------- e2e over gRPC


class EmbedStack:
    def __init__(self) -> None:
        model = ["--model", str(minilm_path())]
        (self.lm,) = start_many([("lm", [*model, "--task", "embed"])])
        try:
            (self.gateway,) = start_many(
                [("gateway", [*model, "--task", "embed", "--lm", self.lm.address])]
            )
        except BaseException:
            self.lm.stop()
            raise
        self.channels = [channel(self.gateway.address), channel(self.lm.address)]
        self.stub = gateway_pb2_grpc.GatewayStub(self.channels[0])
        self.lm_stub = lm_pb2_grpc.LanguageModelStub(self.channels[1])

    def stop(self) -> None:
        for ch in self.channels:
            ch.close()
        self.gateway.stop()
        self.lm.stop()


@pytest.fixture(scope="module")
def embed_stack() -> Iterator[EmbedStack]:
    stack = EmbedStack()
    yield stack
    stack.stop()


def _inputs(*texts: str) -> list[gateway_pb2.PoolingInput]:
    return [gateway_pb2.PoolingInput(text=t) for t in texts]


def test_embed_over_grpc_equals_offline(embed_stack: EmbedStack, minilm_llm: LLM) -> None:
    reply = embed_stack.stub.Embed(gateway_pb2.EmbedRequest(inputs=_inputs(*TEXTS)), timeout=30)
    offline = minilm_llm.embed(TEXTS)
    assert len(reply.embeddings) == len(TEXTS)
    for got, want in zip(reply.embeddings, offline, strict=True):
        assert list(got.values) == pytest.approx(want.outputs.embedding, abs=ATOL)
    assert reply.usage.prompt_tokens == sum(len(o.prompt_token_ids) for o in offline)
    score = embed_stack.stub.Score(
        gateway_pb2.ScoreRequest(text_1=TEXTS[0], text_2=TEXTS[1:]), timeout=30
    )
    expected = [o.outputs.score for o in minilm_llm.score(TEXTS[0], TEXTS[1:])]
    assert list(score.scores) == pytest.approx(expected, abs=1e-5)
    info = embed_stack.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest(), timeout=10)
    assert list(info.tasks) == ["embed"] and info.architecture == "BertModel"
    lm_info = embed_stack.lm_stub.GetInfo(lm_pb2.GetLMInfoRequest(), timeout=10)
    assert list(lm_info.tasks) == ["embed"] and lm_info.max_model_len == 256


def test_embed_normalize_flag(embed_stack: EmbedStack) -> None:
    request = gateway_pb2.EmbedRequest(inputs=_inputs("hello"), normalize=True)
    (vector,) = embed_stack.stub.Embed(request, timeout=30).embeddings
    assert float(torch.tensor(list(vector.values)).norm()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(grpc.RpcError) as refused:
        embed_stack.stub.Embed(
            gateway_pb2.EmbedRequest(inputs=_inputs("hello"), normalize=False), timeout=30
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "--override-pooler-config" in refused.value.details()


@pytest.mark.parametrize(
    ("call", "code", "words"),
    [
        ("generate", grpc.StatusCode.UNIMPLEMENTED, "for the 'embed' task; 'generate'"),
        ("classify", grpc.StatusCode.UNIMPLEMENTED, "for the 'embed' task; 'classify'"),
        ("empty", grpc.StatusCode.INVALID_ARGUMENT, "at least one input"),
        ("media", grpc.StatusCode.INVALID_ARGUMENT, "BertModel accepts T: image is not"),
        ("lm_generate", grpc.StatusCode.UNIMPLEMENTED, "Generate needs an LM started"),
        ("lm_wrong_task", grpc.StatusCode.UNIMPLEMENTED, "'score' needs an LM started"),
        ("lm_too_long", grpc.StatusCode.INVALID_ARGUMENT, "at most 256"),
    ],
)
def test_refusals_over_grpc(embed_stack: EmbedStack, call: str, code: object, words: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _CALLS[call](embed_stack)
    assert refused.value.code() == code
    assert words in refused.value.details()


def _generate(stack: EmbedStack) -> None:
    for _ in stack.stub.Generate(gateway_pb2.GenerateRequest(prompt="hi"), timeout=10):
        pass


def _lm_generate(stack: EmbedStack) -> None:
    request = lm_pb2.LMGenerateRequest(prompt_token_ids=[101, 102])
    for _ in stack.lm_stub.Generate(request, timeout=10):
        pass


def _image(data: bytes) -> gateway_pb2.MediaPart:
    return gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=data)


def _pool(task: int, token_ids: list[int]) -> lm_pb2.PoolRequest:
    return lm_pb2.PoolRequest(task=task, inputs=[lm_pb2.PoolInput(token_ids=token_ids)])


_CALLS = {
    "generate": _generate,
    "classify": lambda s: s.stub.Classify(
        gateway_pb2.ClassifyRequest(inputs=_inputs("x")), timeout=10
    ),
    "empty": lambda s: s.stub.Embed(gateway_pb2.EmbedRequest(), timeout=10),
    "media": lambda s: s.stub.Embed(
        gateway_pb2.EmbedRequest(inputs=[gateway_pb2.PoolingInput(text="x", media=[_image(b"1")])]),
        timeout=10,
    ),
    "lm_generate": _lm_generate,
    "lm_wrong_task": lambda s: s.lm_stub.Pool(
        _pool(lm_pb2.POOLING_TASK_SCORE, [101, 102]), timeout=10
    ),
    "lm_too_long": lambda s: s.lm_stub.Pool(
        _pool(lm_pb2.POOLING_TASK_EMBED, [101] * 300), timeout=10
    ),
}


def test_gateway_normalize_true_normalizes_what_the_lm_left_raw() -> None:
    """The e2e test above uses MiniLM, which the LM normalizes already; here the LM's pooler
    leaves vectors raw, so only the gateway's normalize=True can make them unit length."""
    from gateway.llm import _pooling_prompts

    llm = LLM(model=str(tiny_model_path("bert")), task="embed",
              override_pooler_config={"normalize": False})  # fmt: skip
    try:
        raw = torch.tensor(llm.embed("hello world")[0].outputs.embedding)
        assert abs(float(raw.norm()) - 1.0) > 1e-3
        result = llm._run(llm._pooling.embed(_pooling_prompts("hello world"), True, None))
        normalized = result.outputs[0].data
        assert float(normalized.norm()) == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(normalized, raw / raw.norm(), atol=1e-6)
    finally:
        llm.close()
