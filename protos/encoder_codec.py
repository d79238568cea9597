"""protobuf <-> encoder domain objects, for the servicer and for the gateway's client."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from protos.encoder_messages import EncodeResult, EncoderInfo, MediaItem
from protos.errors import InvalidRequest
from protos.meshserve.v1 import common_pb2, encoder_pb2
from protos.tensor_codec import tensor_from_proto, tensor_to_proto

MODALITY_CODES = {
    "image": common_pb2.MODALITY_IMAGE,
    "video": common_pb2.MODALITY_VIDEO,
    "audio": common_pb2.MODALITY_AUDIO,
}
MODALITY_NAMES = {code: name for name, code in MODALITY_CODES.items()}


def _options_to_pb(options: Any) -> encoder_pb2.MediaOptions:
    message = encoder_pb2.MediaOptions()
    if options.get("fps") is not None:
        message.fps = float(options["fps"])
    if options.get("num_frames") is not None:
        message.num_frames = int(options["num_frames"])
    return message


def _options_from_pb(message: encoder_pb2.MediaOptions) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if message.HasField("fps"):
        options["fps"] = float(message.fps)
    if message.HasField("num_frames"):
        options["num_frames"] = int(message.num_frames)
    return options


def kwargs_to_json(kwargs: Mapping[str, Any]) -> str:
    return json.dumps(dict(kwargs)) if kwargs else ""


def kwargs_from_json(text: str, field: str) -> dict[str, Any]:
    """A JSON-object field (mm_processor_kwargs) -> dict; InvalidRequest for anything else."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{field} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object, got {type(value).__name__}")
    return value


def item_to_pb(index: int, item: MediaItem) -> encoder_pb2.EncodeItem:
    message = encoder_pb2.EncodeItem(
        options=_options_to_pb(item.options),
        processor_kwargs=kwargs_to_json(item.processor_kwargs),
    )
    if item.embeddings is not None:
        message.embeddings.CopyFrom(tensor_to_proto(item.embeddings))
        grid = item.metadata.get("grid_thw")
        if grid is not None:
            message.grid_thw.extend(int(g) for g in grid)
    elif item.data is not None:
        message.data = item.data
    else:
        raise InvalidRequest(f"media item {index}: only raw bytes or embeddings can be sent")
    return message


def item_from_pb(index: int, message: encoder_pb2.EncodeItem) -> MediaItem:
    options = _options_from_pb(message.options)
    kwargs = kwargs_from_json(message.processor_kwargs, f"item {index} processor_kwargs")
    if message.WhichOneof("source") == "embeddings":
        try:
            embeddings = tensor_from_proto(message.embeddings)
        except ValueError as exc:
            raise InvalidRequest(f"item {index} embeddings: {exc}") from exc
        metadata = {"grid_thw": tuple(message.grid_thw)} if message.grid_thw else {}
        return MediaItem(embeddings=embeddings, options=options, metadata=metadata)
    return MediaItem(data=message.data, options=options, processor_kwargs=kwargs)


def encode_request_to_pb(modality: str, items: Sequence[MediaItem]) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(
        modality=MODALITY_CODES[modality],
        items=[item_to_pb(i, item) for i, item in enumerate(items)],
    )


def result_to_pb(result: EncodeResult) -> encoder_pb2.EncodedItem:
    message = encoder_pb2.EncodedItem(
        content_hash=result.content_hash,
        embeddings=tensor_to_proto(result.embeddings),
        num_tokens=int(result.num_tokens),
        cache_hit=bool(result.cache_hit),
    )
    grid = result.metadata.get("grid_thw")
    if grid is not None:
        message.grid_thw.extend(int(g) for g in grid)
    if result.metadata.get("second_per_grid_t") is not None:
        message.second_per_grid_t = float(result.metadata["second_per_grid_t"])
    for key in ("placeholder", "replacement"):
        setattr(message, key, str(result.metadata.get(key) or ""))
    if result.metadata.get("embed_token_id") is not None:
        message.embed_token_id = int(result.metadata["embed_token_id"])
    message.token_ids.extend(int(t) for t in result.token_ids)
    if result.metadata.get("cross_attention"):
        message.cross_attention = True
        message.cross_attention_rows = int(result.metadata.get("cross_attention_rows") or 0)
    return message


def encode_results_from_pb(reply: encoder_pb2.EncodeResponse) -> list[EncodeResult]:
    results = []
    for item in reply.items:
        metadata: dict[str, Any] = {}
        if item.grid_thw:
            metadata["grid_thw"] = tuple(int(g) for g in item.grid_thw)
        if item.HasField("second_per_grid_t"):
            metadata["second_per_grid_t"] = float(item.second_per_grid_t)
        if item.replacement:
            metadata["placeholder"] = item.placeholder
            metadata["replacement"] = item.replacement
        if item.HasField("embed_token_id"):
            metadata["embed_token_id"] = int(item.embed_token_id)
        if item.cross_attention:
            metadata["cross_attention"] = True
            metadata["cross_attention_rows"] = int(item.cross_attention_rows)
        results.append(
            EncodeResult(
                embeddings=tensor_from_proto(item.embeddings),
                num_tokens=item.num_tokens,
                content_hash=item.content_hash,
                cache_hit=item.cache_hit,
                metadata=metadata,
                token_ids=tuple(int(t) for t in item.token_ids),
            )
        )
    return results


def info_to_pb(info: EncoderInfo) -> encoder_pb2.EncoderInfo:
    cache = info.cache
    return encoder_pb2.EncoderInfo(
        modality=MODALITY_CODES[str(info.modality)],
        # model_id is "<model>|<dtype>[|<processor kwargs>]" (the cache identity): people
        # want the model
        model=info.model_id.partition("|")[0],
        architecture=info.architecture,
        hidden_size=info.hidden_size,
        dtype=info.dtype,
        cache=common_pb2.CacheStats(
            hits=cache.hits,
            misses=cache.misses,
            evictions=cache.evictions,
            entries=cache.num_entries,
            bytes_used=cache.num_bytes,
            max_bytes=cache.max_bytes,
        ),
        num_requests=info.num_requests,
        num_items=info.num_items,
        num_encoded=info.num_encoded,
    )
