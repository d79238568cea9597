"""Generic-path rows over real processes (LM service, one image encoder, gateway): Gemma 3's
bidirectional images (decided in the LM service), Chameleon's VQ token ids and BLIP-2's
before-the-prompt image (both carried by the encoder's gRPC answer)."""

from __future__ import annotations

import pytest

from protos.meshserve.v1 import gateway_pb2
from tests import mm_reference as ref
from tests.e2e.test_gateway import IMAGE, MAX_TOKENS, Stack, _collect, _media, _png, _sampling
from tests.gateway.test_generic_multimodal_b import ROWS, Row, _hf
from tests.parity import check_logprobs_close

E2E_ROWS = [row for row in ROWS if row.name in ("gemma3", "chameleon", "blip2")]


@pytest.mark.parametrize("row", E2E_ROWS, ids=[row.name for row in E2E_ROWS])
def test_generate_over_the_mesh_matches_hf(row: Row) -> None:
    stack = Stack(row.name, ["image"])
    try:
        picture = ref.image((200, 30, 40), max(row.size)).resize(row.size)
        request = gateway_pb2.GenerateRequest(
            prompt=row.prompt, media=[_media(IMAGE, _png(picture))], sampling=_sampling()
        )
        tokens, tops, last = _collect(stack.stub.Generate(request))
        inputs = _hf(stack.path, row.prompt, picture, row)
        expected, expected_tops = ref.generate(ref.hf_model(stack.path), inputs, MAX_TOKENS)
        matched = check_logprobs_close(tokens, tops, expected, expected_tops, row.name)
        assert matched >= MAX_TOKENS // 2
        assert last.usage.prompt_tokens == inputs["input_ids"].shape[1]
    finally:
        stack.stop()
