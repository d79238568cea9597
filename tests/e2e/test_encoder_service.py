"""The Encoder gRPC service as a real process: bad media is INVALID_ARGUMENT naming the item,
and the service keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel, health_status
from protos.meshserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from protos.tensor_codec import tensor_from_proto, tensor_to_proto
from tests.encoder_service.samples import encode_image, make_video, random_frames
from tests.encoder_service.test_media_decoding import _png_header_only, _zero_frame_avi
from tests.services import Service, start_many

IMAGE, VIDEO = common_pb2.MODALITY_IMAGE, common_pb2.MODALITY_VIDEO


@pytest.fixture(scope="module")
def encoders() -> Iterator[dict[str, Service]]:
    model = ["--model", str(tiny_model_path("qwen2_vl"))]
    services = start_many(
        [("encoder", [*model, "--modality", "image"]), ("encoder", [*model, "--modality", "video"])]
    )
    yield {"image": services[0], "video": services[1]}
    for service in services:
        service.stop()


def _stub(service: Service) -> encoder_pb2_grpc.EncoderStub:
    return encoder_pb2_grpc.EncoderStub(channel(service.address))


def _good_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (56, 56, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels), "PNG")


def _encode(
    stub: encoder_pb2_grpc.EncoderStub, modality: int, *items: bytes
) -> encoder_pb2.EncodeResponse:
    return stub.Encode(
        encoder_pb2.EncodeRequest(
            modality=modality, items=[encoder_pb2.EncodeItem(data=d) for d in items]
        )
    )


BAD_IMAGES = {
    "corrupt": b"\x89PNG\r\n\x1a\nthis is not an image",
    "empty": b"",
    "truncated JPEG": encode_image(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")[:200],
    "10000x10000 PNG header": _png_header_only(10_000, 10_000),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_names_the_item_and_the_service_goes_on(
    encoders: dict[str, Service], kind: str
) -> None:
    stub = _stub(encoders["image"])
    with pytest.raises(grpc.RpcError) as info:
        _encode(stub, IMAGE, _good_png(), BAD_IMAGES[kind])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("image 1:"), info.value.details()
    assert health_status(encoders["image"].address) == "SERVING"
    assert len(_encode(stub, IMAGE, _good_png()).items) == 1


def test_zero_frame_video_is_refused(encoders: dict[str, Service]) -> None:
    stub = _stub(encoders["video"])
    with pytest.raises(grpc.RpcError) as info:
        _encode(stub, VIDEO, _zero_frame_avi())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "video 0: has no frames" in info.value.details()
    good = _encode(stub, VIDEO, make_video(random_frames(4, 56, 56), fps=4))
    assert good.items[0].num_tokens > 0 and len(good.items[0].grid_thw) == 3


def test_cache_hit_counters_and_wrong_modality(encoders: dict[str, Service]) -> None:
    stub = _stub(encoders["image"])
    before = stub.GetInfo(encoder_pb2.GetEncoderInfoRequest())
    png = _good_png(seed=7)
    first, second = _encode(stub, IMAGE, png).items[0], _encode(stub, IMAGE, png).items[0]
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.content_hash == second.content_hash
    assert torch.equal(tensor_from_proto(first.embeddings), tensor_from_proto(second.embeddings))
    after = stub.GetInfo(encoder_pb2.GetEncoderInfoRequest())
    assert after.num_encoded == before.num_encoded + 1 and after.cache.hits == before.cache.hits + 1
    assert after.architecture == "Qwen2VLForConditionalGeneration" and after.hidden_size == 64
    with pytest.raises(grpc.RpcError) as info:
        _encode(stub, VIDEO, png)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_large_messages_fit(encoders: dict[str, Service]) -> None:
    """Precomputed embeddings of 40000 x 64 float32 (10 MiB) pass through both ways."""
    stub = _stub(encoders["image"])
    embeddings = torch.randn(40_000, 64)
    item = encoder_pb2.EncodeItem(embeddings=tensor_to_proto(embeddings), grid_thw=[1, 400, 400])
    reply = stub.Encode(encoder_pb2.EncodeRequest(modality=IMAGE, items=[item]))
    assert torch.equal(tensor_from_proto(reply.items[0].embeddings), embeddings)
