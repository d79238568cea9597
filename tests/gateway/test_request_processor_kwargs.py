"""vLLM's per-request mm_processor_kwargs: through offline `LLM.generate` / `LLM.chat`, the
gRPC Generate / Chat requests and the HTTP chat completion to the encoder's HF processor, on top of --mm-processor-kwargs;
part of the embedding cache key; a key the processor does not take is INVALID_ARGUMENT."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch
from transformers import AutoImageProcessor

from encoder_service import Encoder
from gateway import LLM, SamplingParams
from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.encoder_messages import MediaItem
from protos.errors import InvalidRequest
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests import mm_reference as ref
from tests.gateway.api.http_gateway import data_url, png, start_gateway
from tests.parity import TOP_N, check_logprobs_close, our_tops

MAX_TOKENS = 8
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=TOP_N, ignore_eos=True)
PROMPT = "<|vision_start|><|image_pad|><|vision_end|>What is it?"
SMALL = {"max_pixels": 56 * 56}  # the tiny Qwen2-VL's default is 112 x 112: 16 tokens -> 4
IMAGE = ref.image((200, 30, 40), 112)


@pytest.fixture(scope="module")
def qwen2_vl() -> Iterator[LLM]:
    llm = LLM(model=str(tiny_model_path("qwen2_vl")), block_size=4, num_blocks=256)
    yield llm
    llm.close()


def _request(**extra: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, "multi_modal_data": {"image": IMAGE}, **extra}


def test_generate_takes_a_prompts_kwargs_and_equals_hf(qwen2_vl: LLM) -> None:
    path = tiny_model_path("qwen2_vl")
    default, small = qwen2_vl.generate([_request(), _request(mm_processor_kwargs=SMALL)], GREEDY)
    assert len(default.prompt_token_ids) - len(small.prompt_token_ids) == 16 - 4
    inputs = ref.qwen2_vl_inputs(path, list(small.prompt_token_ids))
    processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    inputs.update(dict(processor(images=[IMAGE], return_tensors="pt", **SMALL)))
    tokens, tops = ref.generate(ref.hf_model(path), inputs, MAX_TOKENS)
    completion = small.outputs[0]
    ours = list(completion.token_ids)
    matched = check_logprobs_close(ours, our_tops(completion.logprobs), tokens, tops, "kwargs")
    assert matched >= MAX_TOKENS // 2
    (chat,) = qwen2_vl.chat(
        [{"role": "user", "content": [{"type": "image", "image": IMAGE}]}],
        GREEDY,
        mm_processor_kwargs=SMALL,
    )
    plain = qwen2_vl.chat([{"role": "user", "content": [{"type": "image", "image": IMAGE}]}])
    assert len(plain[0].prompt_token_ids) - len(chat.prompt_token_ids) == 16 - 4


def test_the_kwargs_are_part_of_the_cache_key() -> None:
    with Encoder.from_pretrained(tiny_model_path("qwen2_vl"), "image") as encoder:
        plain, small, again = encoder.encode(
            [
                MediaItem(decoded=IMAGE),
                MediaItem(decoded=IMAGE, processor_kwargs=SMALL),
                MediaItem(decoded=IMAGE, processor_kwargs=dict(SMALL)),
            ]
        )
        (cached,) = encoder.encode([MediaItem(decoded=IMAGE, processor_kwargs=SMALL)])
    assert (plain.num_tokens, small.num_tokens) == (16, 4)
    assert plain.content_hash != small.content_hash == again.content_hash
    assert cached.cache_hit and torch.equal(cached.embeddings, small.embeddings)


def test_an_unknown_key_is_refused_with_the_keys_the_processor_takes(qwen2_vl: LLM) -> None:
    with pytest.raises(InvalidRequest, match=r"the processor of \w+ takes no 'bogus'; it takes"):
        qwen2_vl.generate(_request(mm_processor_kwargs={"bogus": 1}), GREEDY)
    assert qwen2_vl.generate(_request(), GREEDY)[0].outputs[0].token_ids  # nothing else lost


@pytest.fixture(scope="module")
def gateway() -> Iterator[Any]:
    running = start_gateway("qwen2_vl")
    yield running
    running.close()


def test_grpc_requests_carry_the_kwargs(gateway: Any, qwen2_vl: LLM) -> None:
    part = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=png(IMAGE))
    sampling = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    offline = qwen2_vl.generate(_request(mm_processor_kwargs=SMALL), GREEDY)[0].outputs[0]

    def generate(kwargs: str) -> list[int]:
        request = gateway_pb2.GenerateRequest(
            prompt=PROMPT, media=[part], sampling=sampling, mm_processor_kwargs=kwargs
        )
        return [t for reply in stub.Generate(request, timeout=60) for t in reply.token_ids]

    with channel(gateway.grpc_address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        assert generate(json.dumps(SMALL)) == list(offline.token_ids)
        chat = gateway_pb2.ChatRequest(
            messages=[gateway_pb2.ChatMessage(content=[gateway_pb2.ContentPart(media=part)])],
            sampling=common_pb2.SamplingParams(max_tokens=1),
            mm_processor_kwargs=json.dumps(SMALL),
        )
        (last,) = [r for r in stub.Chat(chat, timeout=60) if r.HasField("usage")]
        for bad, words in (
            ("{", "must be a JSON object"),
            ('{"bogus": 1}', "takes no 'bogus'"),
            ('{"max_pixels": "abc"}', "image 0: mm_processor_kwargs: max_pixels must be a posi"),
            ('{"do_rescale": "abc"}', "image 0: the processor refused it"),  # HF's own check
        ):
            with pytest.raises(grpc.RpcError) as refused:
                generate(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in refused.value.details()
    plain = qwen2_vl.chat([{"role": "user", "content": [{"type": "image", "image": IMAGE}]}])
    assert len(plain[0].prompt_token_ids) - last.usage.prompt_tokens == 16 - 4
    url = {"url": data_url("image/png", png(IMAGE))}
    http = gateway.client().chat.completions.create(
        model=gateway.model,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": url}]}],
        max_tokens=1,
        extra_body={"mm_processor_kwargs": SMALL},
    )
    assert http.usage.prompt_tokens == last.usage.prompt_tokens
