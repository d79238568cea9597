"""`meshserve up` with generic-tower media over real processes (LM, encoder, gateway) and a
real gRPC client: a video row (LLaVA-NeXT-Video, `T + V`) sending an MP4, and an audio model
(Audio Flamingo 3) sending a WAV; greedy tokens equal HF `generate` on the media our encoder
decoded from those files.

NOTE: no generic audio row of the seed runs here: the seed's audio rows are Qwen2-Audio (a
native tower, e2e in test_gateway.py), Phi-4-multimodal (HF's processor needs torchvision),
and Ultravox / MiniCPM-O (not in transformers). Audio Flamingo 3 is beyond the seed, so its
test is marked slow (`make test-all`), as is the `--task embed` mesh (its cores are tested in
process in tests/gateway/test_multimodal_embed.py): the default suite keeps one stack start.
"""

from __future__ import annotations

import pytest

from encoder_service.media import MediaLimits, decode_audio, decode_video
from gateway.tools.tiny_models import tiny_model_path
from protos.channels import channel
from protos.hf_processor import load_processor
from protos.meshserve.v1 import common_pb2, encoder_pb2, gateway_pb2, gateway_pb2_grpc
from protos.ports import free_port
from tests import mm_reference as ref
from tests.e2e.test_gateway import MAX_TOKENS, _collect, _mp4, _sampling
from tests.gateway.api.http_gateway import png, wav
from tests.gateway.tools.test_up import start_up  # noqa: F401 - the fixture
from tests.parity import check_logprobs_close

NUM_FRAMES = 4


def test_up_serves_llava_next_video_through_the_generic_path(start_up) -> None:  # noqa: F811
    path = tiny_model_path("llava_next_video")
    up = start_up("--model", str(path), "--port", str(free_port()), "--num-blocks", "128")
    gateway = up.wait_ready()
    assert set(up.services()) == {"lm", "encoder-video", "gateway"}
    clip = _mp4(ref.video_frames(8, 32))
    prompt = "USER: <video>\nWhat happens in it? ASSISTANT:"
    media = gateway_pb2.MediaPart(
        modality=common_pb2.MODALITY_VIDEO,
        data=clip,
        options=encoder_pb2.MediaOptions(num_frames=NUM_FRAMES),
    )
    request = gateway_pb2.GenerateRequest(prompt=prompt, media=[media], sampling=_sampling())
    with channel(gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        tokens, tops, last = _collect(stub.Generate(request))
        again = _collect(stub.Generate(request))[2]
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert list(again.media_cache_hits) == [True]  # the encoder service cached the clip
    frames = decode_video(clip, 0, MediaLimits(), num_frames=NUM_FRAMES).frames
    processor = load_processor(path)
    inputs = dict(processor(text=[prompt], videos=[frames], return_tensors="pt"))
    expected, expected_tops = ref.generate(ref.hf_model(path), inputs, MAX_TOKENS)
    matched = check_logprobs_close(tokens, tops, expected, expected_tops, "llava_next_video-up")
    assert matched >= MAX_TOKENS // 2
    assert last.usage.prompt_tokens == inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_up_serves_audio_flamingo_3_through_the_generic_path(start_up) -> None:  # noqa: F811
    path = tiny_model_path("audioflamingo3")
    up = start_up("--model", str(path), "--port", str(free_port()), "--num-blocks", "128")
    gateway = up.wait_ready()
    assert set(up.services()) == {"lm", "encoder-audio", "gateway"}
    clip = wav(ref.tone(1.3))
    prompt = "<sound>What is it?"
    media = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_AUDIO, data=clip)
    request = gateway_pb2.GenerateRequest(prompt=prompt, media=[media], sampling=_sampling())
    with channel(gateway) as ch:
        tokens, tops, last = _collect(gateway_pb2_grpc.GatewayStub(ch).Generate(request))
    processor = load_processor(path)
    waveform = decode_audio(clip, 0, MediaLimits(), sampling_rate=ref.SAMPLING_RATE)
    inputs = dict(processor(text=[prompt], audio=[waveform], return_tensors="pt"))
    expected, expected_tops = ref.generate(ref.hf_model(path), inputs, MAX_TOKENS)
    matched = check_logprobs_close(tokens, tops, expected, expected_tops, "audioflamingo3-up")
    assert matched >= MAX_TOKENS // 2
    assert last.usage.prompt_tokens == inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_up_task_embed_pools_an_image_over_real_processes(start_up) -> None:  # noqa: F811
    """The LLaVA-NeXT `T / I` embedding row as a mesh: the image goes through the image
    encoder service, its rows through the LM service's Pool call; equal to offline."""
    from gateway import LLM

    path = tiny_model_path("llava_next")
    up = start_up("--model", str(path), "--task", "embed", "--port", str(free_port()))
    gateway = up.wait_ready()
    assert set(up.services()) == {"lm", "encoder-image", "gateway"}
    picture = ref.image((200, 30, 40), 56)
    prompt = "<image>\nSummary above image in one word:"
    media = gateway_pb2.MediaPart(modality=common_pb2.MODALITY_IMAGE, data=png(picture))
    request = gateway_pb2.EmbedRequest(
        inputs=[gateway_pb2.PoolingInput(text=prompt, media=[media])]
    )
    with channel(gateway) as ch:
        (vector,) = gateway_pb2_grpc.GatewayStub(ch).Embed(request, timeout=60).embeddings
    llm = LLM(model=str(path), task="embed")
    try:
        (offline,) = llm.embed({"prompt": prompt, "multi_modal_data": {"image": picture}})
    finally:
        llm.close()
    # NOTE: the PNG decodes to the same pixels as the PIL image: fp32 rounding apart
    assert list(vector.values) == pytest.approx(offline.outputs.embedding, abs=1e-5)
