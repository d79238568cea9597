"""protobuf <-> LM domain objects (TGI's to_pb / from_pb habit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protos.cross_windows import CrossWindow
from protos.errors import InvalidRequest
from protos.lm_messages import MultiModalSpan, PoolingInput, StepOutput
from protos.meshserve.v1 import common_pb2, lm_pb2
from protos.sampling_params import SamplingParams
from protos.status import code_and_details
from protos.tensor_codec import tensor_from_proto, tensor_to_proto

FINISH_CODES = {
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
}
FINISH_NAMES = {code: name for name, code in FINISH_CODES.items()}


def sampling_from_pb(msg: common_pb2.SamplingParams) -> SamplingParams:
    """Proto -> SamplingParams; unset optional fields take vLLM's defaults."""
    kwargs: dict[str, Any] = {
        "min_tokens": msg.min_tokens,
        "top_k": msg.top_k,
        "min_p": msg.min_p,
        "presence_penalty": msg.presence_penalty,
        "frequency_penalty": msg.frequency_penalty,
        "stop_token_ids": tuple(msg.stop_token_ids),
        "ignore_eos": msg.ignore_eos,
        "stop": tuple(msg.stop),
        "begin_suppress_token_ids": tuple(msg.begin_suppress_token_ids),
        "allowed_token_ids": tuple(msg.allowed_token_ids),
    }
    for name in ("max_tokens", "temperature", "top_p", "seed", "repetition_penalty", "logprobs"):
        if msg.HasField(name):
            kwargs[name] = getattr(msg, name)
    return SamplingParams(**kwargs)


def sampling_to_pb(params: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(
        min_tokens=params.min_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        stop=list(params.stop),
        begin_suppress_token_ids=list(params.begin_suppress_token_ids),
        allowed_token_ids=list(params.allowed_token_ids),
    )
    if params.max_tokens is not None:
        msg.max_tokens = params.max_tokens
    if params.seed is not None:
        msg.seed = params.seed
    if params.logprobs is not None:
        msg.logprobs = params.logprobs
    return msg


def spans_from_pb(spans: Any) -> tuple[MultiModalSpan, ...]:
    out = []
    for i, span in enumerate(spans):
        try:
            embeddings = tensor_from_proto(span.embeddings)
        except ValueError as exc:
            raise InvalidRequest(f"media span {i}: {exc}") from exc
        is_embed = tuple(span.is_embed) or None
        rows = int(embeddings.shape[0]) if embeddings.dim() else 0
        out.append(
            MultiModalSpan(
                offset=span.offset,
                length=len(is_embed) if is_embed else rows,
                content_hash=span.content_hash,
                embeddings=embeddings,
                is_embed=is_embed,
            )
        )
    return tuple(out)


def mrope_from_pb(msg: lm_pb2.LMGenerateRequest | lm_pb2.PoolInput) -> Any:
    if not msg.HasField("mrope_positions"):
        return None
    try:
        return tensor_from_proto(msg.mrope_positions).long()
    except ValueError as exc:
        raise InvalidRequest(f"mrope_positions: {exc}") from exc


def encoder_states_from_pb(msg: lm_pb2.LMGenerateRequest) -> Any:
    if not msg.HasField("encoder_states"):
        return None
    try:
        return tensor_from_proto(msg.encoder_states)
    except ValueError as exc:
        raise InvalidRequest(f"encoder_states: {exc}") from exc


def cross_windows_from_pb(msg: lm_pb2.LMGenerateRequest) -> tuple[CrossWindow, ...]:
    return tuple(
        (int(w.start), tuple((int(r.start), int(r.end)) for r in w.ranges))
        for w in msg.cross_windows
    )


def cross_windows_to_pb(windows: Sequence[CrossWindow]) -> list[lm_pb2.CrossWindow]:
    return [
        lm_pb2.CrossWindow(
            start=start, ranges=[lm_pb2.EncoderRange(start=a, end=b) for a, b in ranges]
        )
        for start, ranges in windows
    ]


def span_to_pb(span: MultiModalSpan) -> lm_pb2.MultiModalSpan:
    return lm_pb2.MultiModalSpan(
        offset=span.offset,
        embeddings=tensor_to_proto(span.embeddings),
        content_hash=span.content_hash,
        is_embed=span.is_embed or (),
    )


def logprobs_to_pb(entry: Any) -> common_pb2.PositionLogprobs:
    """One position's logprobs (the sampler's entry) -> proto."""
    sampled = common_pb2.TokenLogprob(
        token_id=entry.token_id, logprob=entry.logprob, rank=entry.rank
    )
    top = [
        common_pb2.TokenLogprob(token_id=t, logprob=lp, rank=r + 1)
        for r, (t, lp) in enumerate(zip(entry.top_token_ids, entry.top_logprobs, strict=True))
    ]
    return common_pb2.PositionLogprobs(sampled=sampled, top=top)


def step_to_pb(outputs: list[StepOutput]) -> lm_pb2.LMGenerateResponse:
    """Merges consecutive outputs of one request into one stream message."""
    last = outputs[-1]
    return lm_pb2.LMGenerateResponse(
        token_ids=[t for o in outputs for t in o.new_token_ids],
        logprobs=[logprobs_to_pb(e) for o in outputs for e in o.new_logprobs if e is not None],
        finish_reason=FINISH_CODES[last.finish_reason],
        num_prompt_tokens=last.num_prompt_tokens,
        num_cached_tokens=last.num_cached_tokens,
    )


def stream_items_to_pb(items: list[tuple[str, Any]]) -> lm_pb2.LMStreamResponse:
    """One GenerateStream message: each request's step output, or the status that ended it
    (an exception, mapped to its status code as every servicer maps it)."""
    outputs = []
    for request_id, item in items:
        if isinstance(item, BaseException):
            code, details = code_and_details(item)
            output = lm_pb2.LMStreamOutput(
                request_id=request_id, error_code=code.value[0], error_message=details
            )
        else:
            output = lm_pb2.LMStreamOutput(request_id=request_id, step=step_to_pb([item]))
        outputs.append(output)
    return lm_pb2.LMStreamResponse(outputs=outputs)


def lm_request_to_pb(request: Any) -> lm_pb2.LMGenerateRequest:
    """gateway.backends.base.LMRequest -> proto."""
    message = lm_pb2.LMGenerateRequest(
        request_id=request.request_id,
        prompt_token_ids=request.prompt_token_ids,
        mm_spans=[span_to_pb(s) for s in request.mm_spans],
        sampling=sampling_to_pb(request.sampling_params),
    )
    if request.mrope_positions is not None:
        message.mrope_positions.CopyFrom(tensor_to_proto(request.mrope_positions))
    if request.encoder_states is not None:
        message.encoder_states.CopyFrom(tensor_to_proto(request.encoder_states))
    message.cross_windows.extend(cross_windows_to_pb(request.cross_windows))
    return message


def step_from_pb(request_id: str, message: lm_pb2.LMGenerateResponse) -> StepOutput:
    return StepOutput(
        request_id=request_id,
        new_token_ids=tuple(message.token_ids),
        new_logprobs=tuple(message.logprobs),
        finish_reason=FINISH_NAMES[message.finish_reason],
        num_prompt_tokens=message.num_prompt_tokens,
        num_cached_tokens=message.num_cached_tokens,
    )


# ----------------------------------------------------------------------------- pooling

POOLING_TASK_CODES = {
    "embed": lm_pb2.POOLING_TASK_EMBED,
    "classify": lm_pb2.POOLING_TASK_CLASSIFY,
    "score": lm_pb2.POOLING_TASK_SCORE,
    "reward": lm_pb2.POOLING_TASK_REWARD,
}
POOLING_TASK_NAMES = {code: name for name, code in POOLING_TASK_CODES.items()}


def pooling_task_from_pb(code: int) -> str:
    if code not in POOLING_TASK_NAMES:
        raise InvalidRequest("a Pool request needs a task: embed, classify, score or reward")
    return POOLING_TASK_NAMES[code]


def pool_inputs_from_pb(inputs: Any) -> list[Any]:
    """PoolInput messages -> protos.lm_messages.PoolingInput (no token types when unset)."""
    return [
        PoolingInput(
            tuple(item.token_ids),
            tuple(item.token_type_ids) or None,
            spans_from_pb(item.mm_spans),
            mrope_from_pb(item),
        )
        for item in inputs
    ]


def pool_request_to_pb(task: str, inputs: Any) -> lm_pb2.PoolRequest:
    if task not in POOLING_TASK_CODES:
        raise InvalidRequest(f"unknown pooling task {task!r}")
    return lm_pb2.PoolRequest(
        task=POOLING_TASK_CODES[task],
        inputs=[_pool_input_to_pb(item) for item in inputs],
    )


def _pool_input_to_pb(item: PoolingInput) -> lm_pb2.PoolInput:
    message = lm_pb2.PoolInput(
        token_ids=item.token_ids,
        token_type_ids=item.token_type_ids or (),
        mm_spans=[span_to_pb(span) for span in item.mm_spans],
    )
    if item.mrope_positions is not None:
        message.mrope_positions.CopyFrom(tensor_to_proto(item.mrope_positions))
    return message


def pool_outputs_to_pb(outputs: list[Any]) -> lm_pb2.PoolResponse:
    return lm_pb2.PoolResponse(outputs=[tensor_to_proto(output) for output in outputs])


def pool_outputs_from_pb(message: lm_pb2.PoolResponse) -> list[Any]:
    return [tensor_from_proto(output) for output in message.outputs]
