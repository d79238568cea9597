from protos.meshserve.v1 import common_pb2 as _common_pb2
from protos.meshserve.v1 import encoder_pb2 as _encoder_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MediaEmbeddings(_message.Message):
    __slots__ = ("embeddings", "grid_thw")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    GRID_THW_FIELD_NUMBER: _ClassVar[int]
    embeddings: _common_pb2.Tensor
    grid_thw: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., grid_thw: _Optional[_Iterable[int]] = ...) -> None: ...

class MediaPart(_message.Message):
    __slots__ = ("modality", "data", "handle", "embeddings", "options")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    modality: _common_pb2.Modality
    data: bytes
    handle: str
    embeddings: MediaEmbeddings
    options: _encoder_pb2.MediaOptions
    def __init__(self, modality: _Optional[_Union[_common_pb2.Modality, str]] = ..., data: _Optional[bytes] = ..., handle: _Optional[str] = ..., embeddings: _Optional[_Union[MediaEmbeddings, _Mapping]] = ..., options: _Optional[_Union[_encoder_pb2.MediaOptions, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "prompt", "media", "sampling", "mm_processor_kwargs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MM_PROCESSOR_KWARGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    media: _containers.RepeatedCompositeFieldContainer[MediaPart]
    sampling: _common_pb2.SamplingParams
    mm_processor_kwargs: str
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., media: _Optional[_Iterable[_Union[MediaPart, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., mm_processor_kwargs: _Optional[str] = ...) -> None: ...

class ContentPart(_message.Message):
    __slots__ = ("text", "media")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    text: str
    media: MediaPart
    def __init__(self, text: _Optional[str] = ..., media: _Optional[_Union[MediaPart, _Mapping]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: _containers.RepeatedCompositeFieldContainer[ContentPart]
    def __init__(self, role: _Optional[str] = ..., content: _Optional[_Iterable[_Union[ContentPart, _Mapping]]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("request_id", "messages", "sampling", "add_generation_prompt", "mm_processor_kwargs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MM_PROCESSOR_KWARGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    sampling: _common_pb2.SamplingParams
    add_generation_prompt: bool
    mm_processor_kwargs: str
    def __init__(self, request_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., add_generation_prompt: _Optional[bool] = ..., mm_processor_kwargs: _Optional[str] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("validate_ms", "encode_ms", "prompt_ms", "time_to_first_token_ms", "total_ms")
    VALIDATE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    validate_ms: float
    encode_ms: float
    prompt_ms: float
    time_to_first_token_ms: float
    total_ms: float
    def __init__(self, validate_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., prompt_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "logprobs", "finish_reason", "usage", "timings", "media_cache_hits")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.PositionLogprobs]
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    timings: StageTimings
    media_cache_hits: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.PositionLogprobs, _Mapping]]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., media_cache_hits: _Optional[_Iterable[bool]] = ...) -> None: ...

class PoolingInput(_message.Message):
    __slots__ = ("text", "media")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    text: str
    media: _containers.RepeatedCompositeFieldContainer[MediaPart]
    def __init__(self, text: _Optional[str] = ..., media: _Optional[_Iterable[_Union[MediaPart, _Mapping]]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "normalize")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[PoolingInput]
    normalize: bool
    def __init__(self, inputs: _Optional[_Iterable[_Union[PoolingInput, _Mapping]]] = ..., normalize: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "usage")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    usage: _common_pb2.Usage
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[PoolingInput]
    def __init__(self, inputs: _Optional[_Iterable[_Union[PoolingInput, _Mapping]]] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("probs", "label_index", "label")
    PROBS_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    label_index: int
    label: str
    def __init__(self, probs: _Optional[_Iterable[float]] = ..., label_index: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results", "usage")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    usage: _common_pb2.Usage
    def __init__(self, results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("text_1", "text_2")
    TEXT_1_FIELD_NUMBER: _ClassVar[int]
    TEXT_2_FIELD_NUMBER: _ClassVar[int]
    text_1: str
    text_2: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text_1: _Optional[str] = ..., text_2: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "usage")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    usage: _common_pb2.Usage
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("request_id", "audio", "language", "task", "sampling")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    audio: bytes
    language: str
    task: str
    sampling: _common_pb2.SamplingParams
    def __init__(self, request_id: _Optional[str] = ..., audio: _Optional[bytes] = ..., language: _Optional[str] = ..., task: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class PutMediaRequest(_message.Message):
    __slots__ = ("media",)
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    media: MediaPart
    def __init__(self, media: _Optional[_Union[MediaPart, _Mapping]] = ...) -> None: ...

class PutMediaResponse(_message.Message):
    __slots__ = ("handle", "num_tokens", "cache_hit", "grid_thw")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    GRID_THW_FIELD_NUMBER: _ClassVar[int]
    handle: str
    num_tokens: int
    cache_hit: bool
    grid_thw: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, handle: _Optional[str] = ..., num_tokens: _Optional[int] = ..., cache_hit: _Optional[bool] = ..., grid_thw: _Optional[_Iterable[int]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "architecture", "tasks", "modality_spec", "limit_mm_per_prompt", "max_model_len", "model_impl")
    class LimitMmPerPromptEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MODALITY_SPEC_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MM_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_IMPL_FIELD_NUMBER: _ClassVar[int]
    model: str
    architecture: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    modality_spec: str
    limit_mm_per_prompt: _containers.ScalarMap[str, int]
    max_model_len: int
    model_impl: str
    def __init__(self, model: _Optional[str] = ..., architecture: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ..., modality_spec: _Optional[str] = ..., limit_mm_per_prompt: _Optional[_Mapping[str, int]] = ..., max_model_len: _Optional[int] = ..., model_impl: _Optional[str] = ...) -> None: ...
