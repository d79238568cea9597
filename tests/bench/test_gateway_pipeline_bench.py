"""bench/gateway_pipeline.py at a tiny size: the fake LM call's steps reach every client
stream through the real mux, orchestrator and reply conversion, and the mux closes."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench import gateway_pipeline
from protos.meshserve.v1 import common_pb2


def test_a_step_message_gives_every_request_one_token_and_the_last_ends_them() -> None:
    step = gateway_pipeline.step_message(["a", "b"], 0, last=False)
    assert [o.request_id for o in step.outputs] == ["a", "b"]
    assert all(len(o.step.token_ids) == 1 and not o.step.finish_reason for o in step.outputs)
    last = gateway_pipeline.step_message(["a"], 4, last=True)
    assert last.outputs[0].step.finish_reason == common_pb2.FINISH_REASON_LENGTH


def test_every_stream_builds_a_reply_per_token(capsys: pytest.CaptureFixture) -> None:
    args = argparse.Namespace(streams=3, max_tokens=5, rounds=1)
    # one_round checks the replies; a mux that never closed would hang here, so it times out
    (per_token,) = asyncio.run(asyncio.wait_for(gateway_pipeline.run(args), 60))
    assert per_token > 0
    assert "gateway pipeline (no gRPC) CPU per streamed token" in capsys.readouterr().out
