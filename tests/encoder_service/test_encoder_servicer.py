"""The async Encoder servicer: concurrent Encode calls run in threads and still share tower
calls, with the same embeddings as calls made one at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from PIL import Image

from encoder_service import Encoder
from encoder_service.server import EncoderServicer
from protos.encoder_messages import MediaItem
from protos.meshserve.v1 import common_pb2, encoder_pb2
from protos.tensor_codec import tensor_from_proto
from tests.encoder_service.samples import encode_image, random_frames


def _request(data: bytes) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(
        modality=common_pb2.MODALITY_IMAGE, items=[encoder_pb2.EncodeItem(data=data)]
    )


def test_concurrent_encode_calls_share_tower_calls(llava_path: Path) -> None:
    images = [
        encode_image(Image.fromarray(random_frames(1, 32, 32, seed=s)[0]), "PNG") for s in range(8)
    ]
    with Encoder.from_pretrained(llava_path, "image", cache_bytes=0, max_wait_s=0.0) as alone:
        expected = [alone.encode([MediaItem(data=data)])[0].embeddings for data in images]
    with Encoder.from_pretrained(llava_path, "image", cache_bytes=0, max_wait_s=0.05) as shared:
        servicer = EncoderServicer("image", shared)

        async def calls() -> list[encoder_pb2.EncodeResponse]:
            return await asyncio.gather(*(servicer.Encode(_request(d), None) for d in images))

        replies = asyncio.run(calls())
        info = shared.info()
    assert info.num_requests == 8 and info.num_tower_calls < 8
    for reply, reference in zip(replies, expected, strict=True):
        ours = tensor_from_proto(reply.items[0].embeddings)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
