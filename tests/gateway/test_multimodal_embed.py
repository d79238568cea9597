"""The seed's multimodal embedding rows: LLaVA-NeXT `T / I` (e5-v: an image prompt or a text
prompt) and Qwen2-VL `T + I` (GME / VLM2Vec / DSE). `LLM(task="embed")` and the gateway's gRPC
`Embed` (and the HTTP /v1/embeddings in vLLM's chat form) take media; every vector equals HF's last-token pooling on the same inputs: the HF
base model's last hidden state at the last token, L2-normalized (the pooler default of a
decoder, see lm_service.pooling.defaults).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gateway import LLM
from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.errors import InvalidRequest
from protos.hf_processor import load_processor
from protos.meshserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests import mm_reference as ref
from tests.gateway.api.http_gateway import data_url, png, start_gateway

# NOTE: fp32 tiny models; our dense pooling run and HF's agree to ~1e-6 (a row scattered to
# the wrong position, a missing M-RoPE position or a lost image moves a vector by >1e-2).
ATOL = 1e-4
E5V_IMAGE = "<image>\nSummary above image in one word:"
E5V_TEXT = "A red square with stripes.\nSummary above sentence in one word:"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>What is shown here?"
QWEN_TEXT = "What is shown here?"


def _picture(color: tuple[int, int, int] = (200, 30, 40)) -> Image.Image:
    # NOTE: 56 x 56 is a Qwen2-VL grid size and LLaVA-NeXT's anyres picks one tile for it
    return ref.image(color, 56)


@pytest.fixture(scope="module")
def llava_next() -> Iterator[LLM]:
    llm = LLM(model=str(tiny_model_path("llava_next")), task="embed")
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def qwen2_vl() -> Iterator[LLM]:
    llm = LLM(model=str(tiny_model_path("qwen2_vl")), task="embed")
    yield llm
    llm.close()


def _last_token(path: Path, inputs: dict[str, Any]) -> torch.Tensor:
    """HF's last-token pooling: the base model's last hidden state at the last token, L2."""
    with torch.inference_mode():
        hidden = ref.hf_model(path).model(**inputs).last_hidden_state  # [1, T, H]
    return F.normalize(hidden[0, -1].float(), dim=-1)


def _assert_close(got: list[float], want: torch.Tensor) -> None:
    torch.testing.assert_close(torch.tensor(got), want, atol=ATOL, rtol=0)


@pytest.mark.seed_row("LlavaNextForConditionalGeneration", "embed")
def test_llava_next_image_and_text_prompts_equal_hf_last_token(llava_next: LLM) -> None:
    path, image = tiny_model_path("llava_next"), _picture()
    processor = load_processor(path)
    by_image, by_text = llava_next.embed(
        [{"prompt": E5V_IMAGE, "multi_modal_data": {"image": image}}, E5V_TEXT]
    )
    image_inputs = dict(processor(text=E5V_IMAGE, images=[image], return_tensors="pt"))
    assert list(by_image.prompt_token_ids) == image_inputs["input_ids"][0].tolist()
    _assert_close(by_image.outputs.embedding, _last_token(path, image_inputs))
    text_inputs = dict(processor(text=E5V_TEXT, return_tensors="pt"))
    _assert_close(by_text.outputs.embedding, _last_token(path, text_inputs))
    other = llava_next.embed(
        {"prompt": E5V_IMAGE, "multi_modal_data": {"image": _picture((9, 9, 9))}}
    )
    assert other[0].outputs.embedding != pytest.approx(by_image.outputs.embedding, abs=1e-3)


# NOTE: Qwen2-VL's images go through its native tower; the pooling model is dense HF
@pytest.mark.seed_row("Qwen2VLForConditionalGeneration", "embed", impl="transformers")
def test_qwen2_vl_text_with_an_image_equals_hf_last_token(qwen2_vl: LLM) -> None:
    path, image = tiny_model_path("qwen2_vl"), _picture()
    with_image, text_only = qwen2_vl.embed(
        [{"prompt": QWEN_IMAGE, "multi_modal_data": {"image": image}}, QWEN_TEXT]
    )
    # NOTE: HF's Qwen2-VL processor needs torchvision; the reference takes our prompt ids
    # (equal to HF's expansion in tests/gateway/prompt) and computes its own M-RoPE positions
    inputs = ref.qwen2_vl_inputs(path, list(with_image.prompt_token_ids), images=[image])
    _assert_close(with_image.outputs.embedding, _last_token(path, inputs))
    text_inputs = ref.qwen2_vl_inputs(path, list(text_only.prompt_token_ids))
    _assert_close(text_only.outputs.embedding, _last_token(path, text_inputs))


def test_t_slash_i_refuses_what_its_rule_does_not_take(llava_next: LLM) -> None:
    two = {"image": [_picture(), _picture((1, 2, 3))]}
    with pytest.raises(InvalidRequest, match=r"^input 0: .* accepts T / I: at most 1 image"):
        llava_next.embed({"prompt": E5V_IMAGE * 2, "multi_modal_data": two})
    rows = torch.zeros(4, 64)  # the embed row has no E
    with pytest.raises(InvalidRequest, match=r"T / I: image cannot be given as precomputed"):
        llava_next.embed({"prompt": E5V_IMAGE, "multi_modal_data": {"image": rows}})


@pytest.fixture(scope="module")
def embed_gateway() -> Iterator[Any]:
    running = start_gateway("llava_next", task="embed")
    yield running
    running.close()


def test_grpc_embed_takes_media_and_equals_offline(embed_gateway: Any, llava_next: LLM) -> None:
    image = _picture()
    part = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=png(image))
    request = gateway_pb2.EmbedRequest(
        inputs=[
            gateway_pb2.PoolingInput(text=E5V_IMAGE, media=[part]),
            gateway_pb2.PoolingInput(text=E5V_TEXT),
        ]
    )
    with channel(embed_gateway.grpc_address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        reply = stub.Embed(request, timeout=60)
        bad = gateway_pb2.PoolingInput(text=E5V_IMAGE, media=[part, part])
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(gateway_pb2.EmbedRequest(inputs=[bad]), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "accepts T / I: at most 1 image" in refused.value.details()
    offline = llava_next.embed(
        [{"prompt": E5V_IMAGE, "multi_modal_data": {"image": image}}, E5V_TEXT]
    )
    for got, want in zip(reply.embeddings, offline, strict=True):
        assert list(got.values) == pytest.approx(want.outputs.embedding, abs=ATOL)
    assert reply.usage.prompt_tokens == sum(len(o.prompt_token_ids) for o in offline)


def test_http_embeddings_take_vllms_chat_form_with_an_image(embed_gateway: Any) -> None:
    path, image = tiny_model_path("llava_next"), _picture()
    url = {"url": data_url("image/png", png(image))}
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]
    reply = httpx.post(f"{embed_gateway.http_url}/v1/embeddings", json={"messages": messages})
    assert reply.status_code == 200, reply.text
    (item,) = reply.json()["data"]
    hf_messages = [{"role": "user", "content": [{"type": "image"}]}]
    processor = load_processor(path)
    text = processor.apply_chat_template(hf_messages, add_generation_prompt=False)
    # a rendered BOS is not doubled (apply_chat_template(tokenize=True)'s rule, and ours)
    special = not text.startswith(processor.tokenizer.bos_token)
    inputs = dict(
        processor(text=text, images=[image], add_special_tokens=special, return_tensors="pt")
    )
    assert reply.json()["usage"]["prompt_tokens"] == inputs["input_ids"].shape[1]
    _assert_close(item["embedding"], _last_token(path, inputs))
    mixed = [{"role": "user", "content": [*messages[0]["content"], {"type": "text", "text": "x"}]}]
    refused = httpx.post(f"{embed_gateway.http_url}/v1/embeddings", json={"messages": mixed})
    assert refused.status_code == 400 and "accepts T / I" in refused.text


def test_gemma3_images_attend_both_ways_when_pooled() -> None:
    """Beyond the seed's table (any generative model converts with --task embed): Gemma 3's
    image tokens see each other in the pooled pass too, as in HF (causal images moved the
    vector by ~5e-3 on this model)."""
    path, image = tiny_model_path("gemma3"), _picture()
    prompt = "<start_of_image>What is it?"
    llm = LLM(model=str(path), task="embed")
    try:
        (out,) = llm.embed({"prompt": prompt, "multi_modal_data": {"image": image}})
    finally:
        llm.close()
    inputs = dict(load_processor(path)(text=prompt, images=[image], return_tensors="pt"))
    assert list(out.prompt_token_ids) == inputs["input_ids"][0].tolist()
    _assert_close(out.outputs.embedding, _last_token(path, inputs))


def test_a_prompts_mm_processor_kwargs_reach_the_encoder_of_a_pooling_request(
    qwen2_vl: LLM,
) -> None:
    image = ref.image((200, 30, 40), 112)  # the tiny Qwen2-VL's default: 16 tokens
    request = {"prompt": QWEN_IMAGE, "multi_modal_data": {"image": image}}
    plain, small = qwen2_vl.embed(
        [request, {**request, "mm_processor_kwargs": {"max_pixels": 56 * 56}}]  # 4 tokens
    )
    assert len(plain.prompt_token_ids) - len(small.prompt_token_ids) == 16 - 4
    assert small.outputs.embedding != pytest.approx(plain.outputs.embedding, abs=1e-3)
