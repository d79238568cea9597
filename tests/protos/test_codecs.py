"""The LM and encoder codecs carry what the generic multimodal path needs, losslessly."""

from __future__ import annotations

import torch

from protos.encoder_codec import encode_results_from_pb, result_to_pb
from protos.encoder_messages import EncodeResult
from protos.lm_codec import (
    pool_inputs_from_pb,
    pool_request_to_pb,
    sampling_from_pb,
    sampling_to_pb,
    span_to_pb,
    spans_from_pb,
)
from protos.lm_messages import MultiModalSpan, PoolingInput
from protos.meshserve.v1 import encoder_pb2, lm_pb2
from protos.sampling_params import SamplingParams


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


def test_a_pooling_input_keeps_its_media_and_mrope_positions() -> None:
    span = MultiModalSpan(1, 3, "h", torch.randn(2, 8), is_embed=(True, False, True))
    positions = torch.arange(15).reshape(3, 5)
    given = [PoolingInput((5, 6, 6, 6, 7), None, (span,), positions), PoolingInput((1, 2))]
    request = pool_request_to_pb("embed", given)
    back = pool_inputs_from_pb(lm_pb2.PoolRequest.FromString(request.SerializeToString()).inputs)
    (got_span,) = back[0].mm_spans
    assert (got_span.offset, got_span.length, got_span.is_embed) == (1, 3, (True, False, True))
    assert torch.equal(got_span.embeddings, span.embeddings)
    assert torch.equal(back[0].mrope_positions, positions)
    assert back[1] == PoolingInput((1, 2)) and back[1].mrope_positions is None


def test_sampling_params_round_trip_with_token_restrictions() -> None:
    params = SamplingParams(
        max_tokens=3, stop_token_ids=(2,), begin_suppress_token_ids=(220, 2), allowed_token_ids=(7,)
    )
    assert sampling_from_pb(sampling_to_pb(params)) == params


def test_cross_attention_media_and_windows_cross_the_wire() -> None:
    """Mllama: the encoder's cross-attention facts and the LM request's windows round-trip
    (a lost window would let every token attend every image, silently)."""
    from gateway.backends.base import LMRequest
    from protos.lm_codec import cross_windows_from_pb, lm_request_to_pb
    from protos.sampling_params import SamplingParams

    metadata = {
        "placeholder": "<|image|>",
        "replacement": "<|image|>",
        "embed_token_id": 6,
        "cross_attention": True,
        "cross_attention_rows": 5,
    }
    result = EncodeResult(torch.ones(10, 4), 10, "hash", False, metadata)
    reply = encoder_pb2.EncodeResponse(items=[result_to_pb(result)])
    (back,) = encode_results_from_pb(
        encoder_pb2.EncodeResponse.FromString(reply.SerializeToString())
    )
    assert dict(back.metadata) == metadata
    windows = ((1, ((0, 5),)), (4, ((0, 5), (10, 20))), (9, ()))
    states = torch.ones(20, 4)
    request = LMRequest("r", [1, 6, 2], SamplingParams(), encoder_states=states)
    assert cross_windows_from_pb(lm_request_to_pb(request)) == ()
    windowed = LMRequest(
        "r", [1, 6, 2], SamplingParams(), encoder_states=states, cross_windows=windows
    )
    message = lm_request_to_pb(windowed)
    wire = lm_pb2.LMGenerateRequest.FromString(message.SerializeToString())
    assert cross_windows_from_pb(wire) == windows
