"""gRPC client requests -> pipeline requests: what a client may ask is capped here."""

from __future__ import annotations

import pytest

from gateway.api.grpc_convert import chat_from_pb, generate_from_pb
from protos.errors import InvalidRequest
from protos.meshserve.v1 import common_pb2, gateway_pb2


def test_a_client_may_ask_at_most_20_top_logprobs() -> None:
    ok = gateway_pb2.GenerateRequest(prompt="hi", sampling=common_pb2.SamplingParams(logprobs=20))
    assert generate_from_pb(ok, None).sampling_params.logprobs == 20
    too_many = common_pb2.SamplingParams(logprobs=21)
    with pytest.raises(InvalidRequest, match="logprobs must be between 0 and 20, got 21"):
        generate_from_pb(gateway_pb2.GenerateRequest(prompt="hi", sampling=too_many), None)
    turn = gateway_pb2.ChatMessage(role="user", content=[gateway_pb2.ContentPart(text="hi")])
    chat = gateway_pb2.ChatRequest(messages=[turn], sampling=too_many)
    with pytest.raises(InvalidRequest, match="got 21"):
        chat_from_pb(chat, None)
