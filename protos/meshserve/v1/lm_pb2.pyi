from protos.meshserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoolingTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_TASK_UNSPECIFIED: _ClassVar[PoolingTask]
    POOLING_TASK_EMBED: _ClassVar[PoolingTask]
    POOLING_TASK_CLASSIFY: _ClassVar[PoolingTask]
    POOLING_TASK_SCORE: _ClassVar[PoolingTask]
    POOLING_TASK_REWARD: _ClassVar[PoolingTask]
POOLING_TASK_UNSPECIFIED: PoolingTask
POOLING_TASK_EMBED: PoolingTask
POOLING_TASK_CLASSIFY: PoolingTask
POOLING_TASK_SCORE: PoolingTask
POOLING_TASK_REWARD: PoolingTask

class MultiModalSpan(_message.Message):
    __slots__ = ("offset", "embeddings", "content_hash", "is_embed")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    IS_EMBED_FIELD_NUMBER: _ClassVar[int]
    offset: int
    embeddings: _common_pb2.Tensor
    content_hash: str
    is_embed: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, offset: _Optional[int] = ..., embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., content_hash: _Optional[str] = ..., is_embed: _Optional[_Iterable[bool]] = ...) -> None: ...

class LMGenerateRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "mm_spans", "mrope_positions", "sampling", "encoder_states", "cross_windows")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MM_SPANS_FIELD_NUMBER: _ClassVar[int]
    MROPE_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ENCODER_STATES_FIELD_NUMBER: _ClassVar[int]
    CROSS_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    mm_spans: _containers.RepeatedCompositeFieldContainer[MultiModalSpan]
    mrope_positions: _common_pb2.Tensor
    sampling: _common_pb2.SamplingParams
    encoder_states: _common_pb2.Tensor
    cross_windows: _containers.RepeatedCompositeFieldContainer[CrossWindow]
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., mm_spans: _Optional[_Iterable[_Union[MultiModalSpan, _Mapping]]] = ..., mrope_positions: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., encoder_states: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., cross_windows: _Optional[_Iterable[_Union[CrossWindow, _Mapping]]] = ...) -> None: ...

class CrossWindow(_message.Message):
    __slots__ = ("start", "ranges")
    START_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    start: int
    ranges: _containers.RepeatedCompositeFieldContainer[EncoderRange]
    def __init__(self, start: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[EncoderRange, _Mapping]]] = ...) -> None: ...

class EncoderRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class LMStreamRequest(_message.Message):
    __slots__ = ("generate", "abort_request_id")
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    ABORT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    generate: LMGenerateRequest
    abort_request_id: str
    def __init__(self, generate: _Optional[_Union[LMGenerateRequest, _Mapping]] = ..., abort_request_id: _Optional[str] = ...) -> None: ...

class LMStreamOutput(_message.Message):
    __slots__ = ("request_id", "step", "error_code", "error_message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    step: LMGenerateResponse
    error_code: int
    error_message: str
    def __init__(self, request_id: _Optional[str] = ..., step: _Optional[_Union[LMGenerateResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class LMStreamResponse(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[LMStreamOutput]
    def __init__(self, outputs: _Optional[_Iterable[_Union[LMStreamOutput, _Mapping]]] = ...) -> None: ...

class LMGenerateResponse(_message.Message):
    __slots__ = ("token_ids", "logprobs", "finish_reason", "num_prompt_tokens", "num_cached_tokens")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.PositionLogprobs]
    finish_reason: _common_pb2.FinishReason
    num_prompt_tokens: int
    num_cached_tokens: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.PositionLogprobs, _Mapping]]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., num_prompt_tokens: _Optional[int] = ..., num_cached_tokens: _Optional[int] = ...) -> None: ...

class PoolInput(_message.Message):
    __slots__ = ("token_ids", "token_type_ids", "mm_spans", "mrope_positions")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_IDS_FIELD_NUMBER: _ClassVar[int]
    MM_SPANS_FIELD_NUMBER: _ClassVar[int]
    MROPE_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    token_type_ids: _containers.RepeatedScalarFieldContainer[int]
    mm_spans: _containers.RepeatedCompositeFieldContainer[MultiModalSpan]
    mrope_positions: _common_pb2.Tensor
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., token_type_ids: _Optional[_Iterable[int]] = ..., mm_spans: _Optional[_Iterable[_Union[MultiModalSpan, _Mapping]]] = ..., mrope_positions: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class PoolRequest(_message.Message):
    __slots__ = ("task", "inputs")
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    task: PoolingTask
    inputs: _containers.RepeatedCompositeFieldContainer[PoolInput]
    def __init__(self, task: _Optional[_Union[PoolingTask, str]] = ..., inputs: _Optional[_Iterable[_Union[PoolInput, _Mapping]]] = ...) -> None: ...

class PoolResponse(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    def __init__(self, outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class GetLMInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LMInfo(_message.Message):
    __slots__ = ("model", "architecture", "model_impl", "max_model_len", "block_size", "num_blocks", "vocab_size", "hidden_size", "dtype", "uses_mrope", "tasks")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MODEL_IMPL_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    USES_MROPE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    model: str
    architecture: str
    model_impl: str
    max_model_len: int
    block_size: int
    num_blocks: int
    vocab_size: int
    hidden_size: int
    dtype: str
    uses_mrope: bool
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., architecture: _Optional[str] = ..., model_impl: _Optional[str] = ..., max_model_len: _Optional[int] = ..., block_size: _Optional[int] = ..., num_blocks: _Optional[int] = ..., vocab_size: _Optional[int] = ..., hidden_size: _Optional[int] = ..., dtype: _Optional[str] = ..., uses_mrope: _Optional[bool] = ..., tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadInfo(_message.Message):
    __slots__ = ("num_running", "num_waiting", "kv_cache_usage", "num_free_blocks", "num_blocks", "num_preemptions", "prefix_cache_hit_rate")
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    num_blocks: int
    num_preemptions: int
    prefix_cache_hit_rate: float
    def __init__(self, num_running: _Optional[int] = ..., num_waiting: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., num_free_blocks: _Optional[int] = ..., num_blocks: _Optional[int] = ..., num_preemptions: _Optional[int] = ..., prefix_cache_hit_rate: _Optional[float] = ...) -> None: ...
