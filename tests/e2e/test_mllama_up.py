"""`meshserve up` on a tiny Mllama over real processes (LM, image encoder, gateway) and a real
gRPC client: two PNG images in one prompt cross the wire as the request's cross-attention
states and windows; greedy tokens equal HF `generate` (same prompt ids as the in-process test).

NOTE: marked slow (`make test-all`): the same cores are tested in process in
tests/gateway/test_mllama_images.py; this proves the wire (encoder.proto's cross_attention facts,
lm.proto's cross_windows), whose loss would make every token attend every image silently.
"""

from __future__ import annotations

import pytest
from transformers import AutoProcessor, AutoTokenizer, MllamaForConditionalGeneration

from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from protos.ports import free_port
from tests.e2e.test_gateway import _collect, _sampling
from tests.gateway.api.http_gateway import png
from tests.gateway.test_mllama_images import MAX_TOKENS, PROMPTS, _hf_generate
from tests.gateway.tools.test_up import start_up  # noqa: F401 - the fixture


@pytest.mark.slow
def test_up_serves_mllama_images_through_cross_attention(start_up) -> None:  # noqa: F811
    path = tiny_model_path("mllama")
    port = str(free_port())
    up = start_up("--model", str(path), "--port", port, "--limit-mm-per-prompt", "image=2")
    gateway = up.wait_ready()
    assert set(up.services()) == {"lm", "encoder-image", "gateway"}
    text, images = PROMPTS[0]
    media = [gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=png(i)) for i in images]
    sampling = _sampling(max_tokens=MAX_TOKENS)
    request = gateway_pb2.GenerateRequest(prompt=text, media=media, sampling=sampling)
    with channel(gateway) as ch:
        tokens, _, last = _collect(gateway_pb2_grpc.GatewayStub(ch).Generate(request))
    tokenizer = AutoTokenizer.from_pretrained(path)
    # the gateway's prompt: the processor's layout puts <s> first, and no second BOS
    ids = tokenizer(tokenizer.bos_token + text, add_special_tokens=False)["input_ids"]
    hf = MllamaForConditionalGeneration.from_pretrained(path).eval()
    assert tokens == _hf_generate(hf, AutoProcessor.from_pretrained(path), ids, images)
    assert last.usage.prompt_tokens == len(ids)
