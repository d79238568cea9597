"""Pooling over HTTP: /v1/embeddings with the openai client (float and base64), vLLM's /score
and /classify, each equal to the gateway's gRPC Embed, Score and Classify."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from protos.channels import channel
from protos.meshserve.v1 import gateway_pb2, gateway_pb2_grpc
from tests.gateway.api.http_gateway import RunningGateway, start_gateway

TEXTS = ["A man is eating food.", "A man is eating bread.", "The baby is carried by the woman."]
ATOL = 1e-5


@pytest.fixture(scope="module")
def embedder() -> Iterator[RunningGateway]:
    running = start_gateway("bert", task="embed")
    yield running
    running.close()


def _stub(gateway: RunningGateway) -> tuple[object, gateway_pb2_grpc.GatewayStub]:
    ch = channel(gateway.grpc_address)
    return ch, gateway_pb2_grpc.GatewayStub(ch)


def _inputs(texts: list[str]) -> list[gateway_pb2.PoolingInput]:
    return [gateway_pb2.PoolingInput(text=t) for t in texts]


def test_embeddings_float_and_base64_equal_grpc_embed(embedder: RunningGateway) -> None:
    client = embedder.client()
    as_float = client.embeddings.create(model=embedder.model, input=TEXTS, encoding_format="float")
    as_base64 = client.embeddings.create(model=embedder.model, input=TEXTS)  # the client's default
    ch, stub = _stub(embedder)
    with ch:
        expected = stub.Embed(gateway_pb2.EmbedRequest(inputs=_inputs(TEXTS)))
    for got, decoded, want in zip(as_float.data, as_base64.data, expected.embeddings, strict=True):
        np.testing.assert_allclose(got.embedding, want.values, atol=ATOL)
        np.testing.assert_allclose(decoded.embedding, want.values, atol=ATOL)
    assert [d.index for d in as_float.data] == [0, 1, 2]
    assert as_float.usage.prompt_tokens == expected.usage.prompt_tokens
    assert as_float.usage.total_tokens == as_float.usage.prompt_tokens
    tokenizer = embedder.orchestrator.prompts.tokenizer
    by_ids = client.embeddings.create(
        model=embedder.model, input=tokenizer(TEXTS[0])["input_ids"], encoding_format="float"
    )
    np.testing.assert_allclose(by_ids.data[0].embedding, as_float.data[0].embedding, atol=ATOL)


def test_embedding_refusals(embedder: RunningGateway) -> None:
    client = embedder.client()
    with pytest.raises(openai.BadRequestError, match="dimensions is not supported"):
        client.embeddings.create(model=embedder.model, input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError, match="at least one input"):
        client.embeddings.create(model=embedder.model, input=[])
    with pytest.raises(openai.BadRequestError, match="'generate' is not available"):
        client.chat.completions.create(
            model=embedder.model, messages=[{"role": "user", "content": "x"}]
        )


def test_score_with_an_embedding_model_is_the_cosine(embedder: RunningGateway) -> None:
    body = {"model": embedder.model, "text_1": TEXTS[0], "text_2": TEXTS[1:]}
    reply = httpx.post(f"{embedder.http_url}/score", json=body).json()
    ch, stub = _stub(embedder)
    with ch:
        expected = stub.Score(gateway_pb2.ScoreRequest(text_1=TEXTS[0], text_2=TEXTS[1:]))
    assert [d["score"] for d in reply["data"]] == pytest.approx(list(expected.scores), abs=ATOL)
    assert reply["object"] == "list" and reply["data"][0]["object"] == "score"
    refused = httpx.post(f"{embedder.http_url}/v1/score", json={**body, "text_1": ["a", "b", "c"]})
    assert refused.status_code == 400
    assert "give one text_1, or as many as text_2" in refused.json()["error"]["message"]


def test_classify_and_cross_encoder_score_equal_grpc() -> None:
    classifier = start_gateway("qwen2_cls", task="classify")
    try:
        body = {"model": classifier.model, "input": TEXTS}
        reply = httpx.post(f"{classifier.http_url}/classify", json=body).json()
        ch, stub = _stub(classifier)
        with ch:
            expected = stub.Classify(gateway_pb2.ClassifyRequest(inputs=_inputs(TEXTS)))
    finally:
        classifier.close()
    for got, want in zip(reply["data"], expected.results, strict=True):
        assert got["label"] == want.label and got["label"] in ("negative", "positive")
        assert got["probs"] == pytest.approx(list(want.probs), abs=ATOL)
        assert got["num_classes"] == 2
    assert reply["usage"]["prompt_tokens"] == expected.usage.prompt_tokens
    scorer = start_gateway("bert_cls", task="score")
    try:
        body = {"model": scorer.model, "text_1": TEXTS[0], "text_2": TEXTS[1:]}
        scored = httpx.post(f"{scorer.http_url}/v1/score", json=body).json()
        ch, stub = _stub(scorer)
        with ch:
            want = stub.Score(gateway_pb2.ScoreRequest(text_1=TEXTS[0], text_2=TEXTS[1:]))
        wrong_task = httpx.post(f"{scorer.http_url}/classify", json={"input": "x"})
    finally:
        scorer.close()
    assert [d["score"] for d in scored["data"]] == pytest.approx(list(want.scores), abs=ATOL)
    assert wrong_task.status_code == 400
    assert "'score' task; 'classify' is not available" in wrong_task.json()["error"]["message"]
