"""Encoder results over the wire: what the generic towers say about each item survives."""

from __future__ import annotations

import torch

from protos.encoder_codec import encode_results_from_pb, result_to_pb
from protos.encoder_messages import BEFORE_PROMPT, EncodeResult
from protos.meshserve.v1 import encoder_pb2


def _round_trip(result: EncodeResult) -> EncodeResult:
    reply = encoder_pb2.EncodeResponse(items=[result_to_pb(result)])
    (back,) = encode_results_from_pb(
        encoder_pb2.EncodeResponse.FromString(reply.SerializeToString())
    )
    return back


def test_discrete_token_ids_cross_the_wire() -> None:
    """Chameleon: the ids that take the embed positions, and no embedding rows."""
    metadata = {
        "placeholder": "<image>",
        "replacement": "<b><image><image><e>",
        "embed_token_id": 6,
    }
    result = EncodeResult(torch.empty(0, 64), 2, "h", False, metadata, token_ids=(301, 302))
    back = _round_trip(result)
    assert back.token_ids == (301, 302) and back.num_tokens == 2
    assert tuple(back.embeddings.shape) == (0, 64)
    assert dict(back.metadata) == metadata


def test_an_item_placed_before_the_prompt_keeps_its_empty_placeholder() -> None:
    """BLIP-2: no placeholder in the text; the replacement goes before the prompt."""
    metadata = {"placeholder": BEFORE_PROMPT, "replacement": "<image>" * 2, "embed_token_id": 6}
    back = _round_trip(EncodeResult(torch.ones(2, 8), 2, "h", True, metadata))
    assert back.metadata["placeholder"] == BEFORE_PROMPT
    assert back.metadata["replacement"] == "<image><image>"
    assert back.token_ids == ()
    torch.testing.assert_close(back.embeddings, torch.ones(2, 8))
