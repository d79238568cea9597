from protos.meshserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MediaOptions(_message.Message):
    __slots__ = ("fps", "num_frames")
    FPS_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    fps: float
    num_frames: int
    def __init__(self, fps: _Optional[float] = ..., num_frames: _Optional[int] = ...) -> None: ...

class EncodeItem(_message.Message):
    __slots__ = ("data", "embeddings", "options", "grid_thw", "processor_kwargs")
    DATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    GRID_THW_FIELD_NUMBER: _ClassVar[int]
    PROCESSOR_KWARGS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    embeddings: _common_pb2.Tensor
    options: MediaOptions
    grid_thw: _containers.RepeatedScalarFieldContainer[int]
    processor_kwargs: str
    def __init__(self, data: _Optional[bytes] = ..., embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., options: _Optional[_Union[MediaOptions, _Mapping]] = ..., grid_thw: _Optional[_Iterable[int]] = ..., processor_kwargs: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("modality", "items")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    modality: _common_pb2.Modality
    items: _containers.RepeatedCompositeFieldContainer[EncodeItem]
    def __init__(self, modality: _Optional[_Union[_common_pb2.Modality, str]] = ..., items: _Optional[_Iterable[_Union[EncodeItem, _Mapping]]] = ...) -> None: ...

class EncodedItem(_message.Message):
    __slots__ = ("content_hash", "embeddings", "num_tokens", "cache_hit", "grid_thw", "second_per_grid_t", "placeholder", "replacement", "embed_token_id", "token_ids", "cross_attention", "cross_attention_rows")
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    GRID_THW_FIELD_NUMBER: _ClassVar[int]
    SECOND_PER_GRID_T_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    REPLACEMENT_FIELD_NUMBER: _ClassVar[int]
    EMBED_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CROSS_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    CROSS_ATTENTION_ROWS_FIELD_NUMBER: _ClassVar[int]
    content_hash: str
    embeddings: _common_pb2.Tensor
    num_tokens: int
    cache_hit: bool
    grid_thw: _containers.RepeatedScalarFieldContainer[int]
    second_per_grid_t: float
    placeholder: str
    replacement: str
    embed_token_id: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    cross_attention: bool
    cross_attention_rows: int
    def __init__(self, content_hash: _Optional[str] = ..., embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., num_tokens: _Optional[int] = ..., cache_hit: _Optional[bool] = ..., grid_thw: _Optional[_Iterable[int]] = ..., second_per_grid_t: _Optional[float] = ..., placeholder: _Optional[str] = ..., replacement: _Optional[str] = ..., embed_token_id: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., cross_attention: _Optional[bool] = ..., cross_attention_rows: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EncodedItem]
    def __init__(self, items: _Optional[_Iterable[_Union[EncodedItem, _Mapping]]] = ...) -> None: ...

class GetEncoderInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EncoderInfo(_message.Message):
    __slots__ = ("modality", "model", "architecture", "hidden_size", "dtype", "cache", "num_requests", "num_items", "num_encoded")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NUM_ENCODED_FIELD_NUMBER: _ClassVar[int]
    modality: _common_pb2.Modality
    model: str
    architecture: str
    hidden_size: int
    dtype: str
    cache: _common_pb2.CacheStats
    num_requests: int
    num_items: int
    num_encoded: int
    def __init__(self, modality: _Optional[_Union[_common_pb2.Modality, str]] = ..., model: _Optional[str] = ..., architecture: _Optional[str] = ..., hidden_size: _Optional[int] = ..., dtype: _Optional[str] = ..., cache: _Optional[_Union[_common_pb2.CacheStats, _Mapping]] = ..., num_requests: _Optional[int] = ..., num_items: _Optional[int] = ..., num_encoded: _Optional[int] = ...) -> None: ...
