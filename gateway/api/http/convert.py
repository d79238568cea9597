"""OpenAI request bodies -> the pipeline's GenerationRequests (one per choice).

A field we cannot honour is refused (Unsupported, a 400) rather than ignored: tools,
structured output, logit_bias, suffix, best_of.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gateway.api.http.content import conversation
from gateway.api.http.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from gateway.pipeline.types import GenerationRequest
from protos.errors import InvalidRequest, Unsupported
from protos.sampling_params import SamplingParams, check_client_logprobs

MAX_CHOICES = 128


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def sampling_params(
    body: SamplingFields, max_tokens: int | None, logprobs: int | None
) -> SamplingParams:
    """The body's sampling fields with OpenAI's defaults (temperature 1, top_p 1)."""
    if body.logit_bias:
        raise Unsupported("logit_bias is not supported; leave it out")
    stop = body.stop
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=_or(body.min_tokens, 0),
        temperature=_or(body.temperature, 1.0),
        top_k=_or(body.top_k, 0),
        top_p=_or(body.top_p, 1.0),
        min_p=_or(body.min_p, 0.0),
        seed=body.seed,
        repetition_penalty=_or(body.repetition_penalty, 1.0),
        presence_penalty=_or(body.presence_penalty, 0.0),
        frequency_penalty=_or(body.frequency_penalty, 0.0),
        logprobs=logprobs,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=bool(body.ignore_eos),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
    )


def num_choices(body: SamplingFields) -> int:
    n = _or(body.n, 1)
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"n must be between 1 and {MAX_CHOICES}, got {n}")
    return n


def include_usage(body: SamplingFields) -> bool:
    """stream_options.include_usage; OpenAI refuses stream_options without stream."""
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("stream_options is only allowed when stream is true")
    return bool(body.stream_options and body.stream_options.include_usage)


async def chat_request(
    body: ChatCompletionRequest, request_id: str, allowed_domains: Sequence[str]
) -> GenerationRequest:
    _refuse_chat_extras(body)
    messages, media = await conversation(body.messages, allowed_domains)
    add_generation_prompt = _or(body.add_generation_prompt, True)
    template_kwargs = dict(body.chat_template_kwargs or {})
    if body.continue_final_message:
        if body.add_generation_prompt:
            raise InvalidRequest(
                "continue_final_message and add_generation_prompt cannot both be true"
            )
        add_generation_prompt = False
        template_kwargs["continue_final_message"] = True
    max_tokens = _or(body.max_completion_tokens, body.max_tokens)
    return GenerationRequest(
        request_id=request_id,
        sampling_params=sampling_params(body, max_tokens, _chat_logprobs(body)),
        messages=messages,
        media=tuple(media),
        add_generation_prompt=add_generation_prompt,
        chat_template_kwargs=template_kwargs,
        skip_special_tokens=_or(body.skip_special_tokens, True),
        include_stop_str_in_output=bool(body.include_stop_str_in_output),
        mm_processor_kwargs=dict(body.mm_processor_kwargs or {}),
    )


def _chat_logprobs(body: ChatCompletionRequest) -> int | None:
    """SamplingParams.logprobs: the top-n count when `logprobs` is true, else None."""
    if body.top_logprobs is not None:
        if not body.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true")
        check_client_logprobs(body.top_logprobs, "top_logprobs")
    return _or(body.top_logprobs, 0) if body.logprobs else None


def _refuse_chat_extras(body: ChatCompletionRequest) -> None:
    if body.tools:
        raise Unsupported("tool calling is not supported; send the request without tools")
    if body.tool_choice not in (None, "none", "auto"):
        raise Unsupported("tool_choice is not supported; leave it out")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise Unsupported(
            f"response_format {body.response_format.get('type')!r} (structured output) is not "
            "supported; leave it out or use {'type': 'text'}"
        )
    if body.chat_template is not None:
        raise Unsupported(
            "a request's own chat_template is not accepted; the model's template is used"
        )


def completion_prompts(body: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a completions request: texts, or token id lists."""
    if body.suffix:
        raise Unsupported("suffix (fill-in-the-middle) is not supported; leave it out")
    if body.best_of is not None and body.best_of != _or(body.n, 1):
        raise Unsupported("best_of is not supported; leave it out (or equal to n)")
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("prompt must not be empty")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return [p if isinstance(p, str) else list(p) for p in prompt]


def completion_request(
    body: CompletionRequest, prompt: str | list[int], request_id: str
) -> GenerationRequest:
    logprobs = body.logprobs
    check_client_logprobs(logprobs)
    if body.echo and logprobs is not None:
        raise Unsupported("echo with logprobs (prompt logprobs) is not supported")
    params = sampling_params(body, _or(body.max_tokens, 16), logprobs)
    text = prompt if isinstance(prompt, str) else None
    return GenerationRequest(
        request_id=request_id,
        sampling_params=params,
        prompt=text,
        prompt_token_ids=None if text is not None else prompt,
        skip_special_tokens=_or(body.skip_special_tokens, True),
        include_stop_str_in_output=bool(body.include_stop_str_in_output),
    )


def fan_out(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """`n` choices of one request: their own ids, and seeds seed, seed + 1, ... when seeded."""
    if n == 1:
        return [request]
    params = request.sampling_params
    return [
        dataclasses.replace(
            request,
            request_id=f"{request.request_id}-{i}",
            sampling_params=params
            if params.seed is None
            else dataclasses.replace(params, seed=params.seed + i),
        )
        for i in range(n)
    ]
