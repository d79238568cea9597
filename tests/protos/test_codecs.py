"""The LM and encoder codecs carry what the generic multimodal path needs, losslessly."""

from __future__ import annotations

import torch

from protos.encoder_codec import encode_results_from_pb, result_to_pb
from protos.encoder_messages import EncodeResult
from protos.lm_codec import span_to_pb, spans_from_pb
from protos.lm_messages import MultiModalSpan
from protos.meshserve.v1 import encoder_pb2


def test_a_masked_span_round_trips() -> None:
    rows = torch.randn(3, 8)
    span = MultiModalSpan(5, 4, "h", rows, (True, False, True, True))
    (back,) = spans_from_pb([span_to_pb(span)])
    assert (back.offset, back.length, back.is_embed, back.content_hash) == (
        5,
        4,
        span.is_embed,
        "h",
    )
    assert torch.equal(back.embeddings, rows)
    (plain,) = spans_from_pb([span_to_pb(MultiModalSpan(1, 3, "g", rows))])
    assert (plain.length, plain.is_embed) == (3, None)


def test_an_encode_result_keeps_its_prompt_splicing_facts() -> None:
    metadata = {"placeholder": "<image>", "replacement": "<image>" * 3, "embed_token_id": 6}
    result = EncodeResult(torch.ones(3, 4), 3, "hash", False, metadata)
    reply = encoder_pb2.EncodeResponse(items=[result_to_pb(result)])
    (back,) = encode_results_from_pb(
        encoder_pb2.EncodeResponse.FromString(reply.SerializeToString())
    )
    assert dict(back.metadata) == metadata
    bare = EncodeResult(torch.ones(2, 4), 2, "h2", True, {})
    (back,) = encode_results_from_pb(encoder_pb2.EncodeResponse(items=[result_to_pb(bare)]))
    assert dict(back.metadata) == {}
