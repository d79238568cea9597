"""protobuf <-> gateway domain objects."""

from __future__ import annotations

import uuid
from typing import Any

from gateway.pipeline.types import GenerationChunk, GenerationRequest, MediaInput
from protos.encoder_codec import kwargs_from_json
from protos.errors import InvalidRequest
from protos.lm_codec import FINISH_CODES, logprobs_to_pb, sampling_from_pb
from protos.meshserve.v1 import common_pb2, gateway_pb2
from protos.sampling_params import SamplingParams, check_client_logprobs
from protos.tensor_codec import tensor_from_proto

MODALITY_NAMES = {
    common_pb2.MODALITY_IMAGE: "image",
    common_pb2.MODALITY_VIDEO: "video",
    common_pb2.MODALITY_AUDIO: "audio",
}
MODALITY_CODES = {name: code for code, name in MODALITY_NAMES.items()}


def media_from_pb(index: int, part: gateway_pb2.MediaPart) -> MediaInput:
    modality = MODALITY_NAMES.get(part.modality)
    if modality is None:
        raise InvalidRequest(f"media item {index} has no modality (image, video or audio)")
    options = _options(part)
    source = part.WhichOneof("source")
    if source == "data":
        if not part.data:
            raise InvalidRequest(f"{modality} {index}: the file is empty")
        return MediaInput(modality, data=part.data, options=options)
    if source == "handle":
        return MediaInput(modality, handle=part.handle, options=options)
    if source == "embeddings":
        try:
            embeddings = tensor_from_proto(part.embeddings.embeddings)
        except ValueError as exc:
            raise InvalidRequest(f"{modality} {index} embeddings: {exc}") from exc
        grid = tuple(part.embeddings.grid_thw) or None
        return MediaInput(modality, embeddings=embeddings, grid_thw=grid, options=options)
    raise InvalidRequest(f"{modality} {index} has no data, handle or embeddings")


def _options(part: gateway_pb2.MediaPart) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if part.options.HasField("fps"):
        options["fps"] = float(part.options.fps)
    if part.options.HasField("num_frames"):
        options["num_frames"] = int(part.options.num_frames)
    return options


def client_sampling_from_pb(sampling: common_pb2.SamplingParams) -> SamplingParams:
    """A client's sampling params, within what a client may ask (MAX_LOGPROBS)."""
    params = sampling_from_pb(sampling)
    check_client_logprobs(params.logprobs)
    return params


def generate_from_pb(
    message: gateway_pb2.GenerateRequest, timeout: float | None
) -> GenerationRequest:
    sampling = message.sampling
    return GenerationRequest(
        request_id=message.request_id or uuid.uuid4().hex,
        sampling_params=client_sampling_from_pb(sampling),
        prompt=message.prompt,
        media=tuple(media_from_pb(i, m) for i, m in enumerate(message.media)),
        skip_special_tokens=_skip_special(sampling),
        include_stop_str_in_output=sampling.include_stop_str_in_output,
        timeout=timeout,
        mm_processor_kwargs=kwargs_from_json(message.mm_processor_kwargs, "mm_processor_kwargs"),
    )


def chat_from_pb(message: gateway_pb2.ChatRequest, timeout: float | None) -> GenerationRequest:
    messages: list[dict[str, Any]] = []
    media: list[MediaInput] = []
    for turn in message.messages:
        parts: list[dict[str, Any]] = []
        for part in turn.content:
            if part.WhichOneof("part") == "media":
                item = media_from_pb(len(media), part.media)
                media.append(item)
                parts.append({"type": item.modality})
            else:
                parts.append({"type": "text", "text": part.text})
        messages.append({"role": turn.role or "user", "content": parts})
    if not messages:
        raise InvalidRequest("a chat request needs at least one message")
    sampling = message.sampling
    return GenerationRequest(
        request_id=message.request_id or uuid.uuid4().hex,
        sampling_params=client_sampling_from_pb(sampling),
        messages=messages,
        media=tuple(media),
        add_generation_prompt=(
            message.add_generation_prompt if message.HasField("add_generation_prompt") else True
        ),
        skip_special_tokens=_skip_special(sampling),
        include_stop_str_in_output=sampling.include_stop_str_in_output,
        timeout=timeout,
        mm_processor_kwargs=kwargs_from_json(message.mm_processor_kwargs, "mm_processor_kwargs"),
    )


def _skip_special(sampling: common_pb2.SamplingParams) -> bool:
    return sampling.skip_special_tokens if sampling.HasField("skip_special_tokens") else True


def chunk_to_pb(chunk: GenerationChunk) -> gateway_pb2.GenerateResponse:
    reply = gateway_pb2.GenerateResponse(
        request_id=chunk.request_id, text=chunk.text, token_ids=chunk.token_ids
    )
    if chunk.logprobs:  # NOTE: once per token per stream: set only what the chunk has
        reply.logprobs.extend(_logprobs(e) for e in chunk.logprobs if e is not None)
    if chunk.finish_reason is None:
        return reply
    reply.finish_reason = FINISH_CODES[chunk.finish_reason]
    reply.media_cache_hits.extend(chunk.media_cache_hits)
    if chunk.usage is not None:
        reply.usage.CopyFrom(
            common_pb2.Usage(
                prompt_tokens=chunk.usage.prompt_tokens,
                completion_tokens=chunk.usage.completion_tokens,
                cached_prompt_tokens=chunk.usage.cached_prompt_tokens,
            )
        )
    if chunk.timings is not None:
        t = chunk.timings
        reply.timings.CopyFrom(
            gateway_pb2.StageTimings(
                validate_ms=t.validate_ms,
                encode_ms=t.encode_ms,
                prompt_ms=t.prompt_ms,
                time_to_first_token_ms=t.time_to_first_token_ms,
                total_ms=t.total_ms,
            )
        )
    return reply


def _logprobs(entry: Any) -> common_pb2.PositionLogprobs:
    if isinstance(entry, common_pb2.PositionLogprobs):
        return entry  # already on the wire form (remote LM)
    return logprobs_to_pb(entry)
