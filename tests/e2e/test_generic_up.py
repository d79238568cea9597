"""`meshserve up` with a model on the generic path (LLaVA-NeXT, anyres): real processes, a real
gRPC client, tokens equal to HF `generate` on the same image."""

from __future__ import annotations

import io

from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from protos.ports import free_port
from tests import mm_reference as ref
from tests.e2e.test_gateway import MAX_TOKENS, _collect, _sampling
from tests.gateway.tools.test_up import start_up  # noqa: F401 - the fixture
from tests.parity import check_logprobs_close


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_up_serves_llava_next_through_the_generic_path(start_up) -> None:  # noqa: F811
    path = tiny_model_path("llava_next")
    up = start_up("--model", str(path), "--port", str(free_port()), "--num-blocks", "128")
    gateway = up.wait_ready()
    assert set(up.services()) == {"lm", "encoder-image", "gateway"}
    picture = ref.image((200, 30, 40), 40).resize((56, 40))  # wide: a 2-tile anyres canvas
    prompt = "USER: <image>\nWhat is in it? ASSISTANT:"
    media = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=_png(picture))
    request = gateway_pb2.GenerateRequest(prompt=prompt, media=[media], sampling=_sampling())
    with channel(gateway) as ch:
        tokens, tops, last = _collect(gateway_pb2_grpc.GatewayStub(ch).Generate(request))
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    inputs = ref.llava_inputs(path, prompt, [picture])
    expected, expected_tops = ref.generate(ref.hf_model(path), inputs, MAX_TOKENS)
    matched = check_logprobs_close(tokens, tops, expected, expected_tops, "llava_next-up")
    assert matched >= MAX_TOKENS // 2
