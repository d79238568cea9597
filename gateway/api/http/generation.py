"""POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway.api.http import convert, responses, streaming
from gateway.api.http.context import HttpContext, context_of
from gateway.api.http.errors import ApiError
from gateway.api.http.schemas import ChatCompletionRequest, CompletionRequest
from gateway.pipeline.pooling import require_generate
from gateway.pipeline.types import GenerationRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    ctx = _generating(request, body.model)
    reply = responses.Reply(ctx.model_name, "chatcmpl")
    base = await convert.chat_request(body, reply.id, ctx.options.allowed_media_domains)
    requests = convert.fan_out(base, convert.num_choices(body))
    text_of = ctx.text_of if body.logprobs else None
    include_usage = convert.include_usage(body)
    if body.stream:
        streams = await streaming.open_streams(ctx.orchestrator, requests)
        return streaming.sse_response(
            streaming.chat_payloads(reply, streams, text_of, include_usage)
        )
    choices = await streaming.until_disconnected(request, _collect_all(ctx, requests))
    return JSONResponse(responses.chat_completion(reply, choices, text_of))


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    ctx = _generating(request, body.model)
    reply = responses.Reply(ctx.model_name, "cmpl")
    n = convert.num_choices(body)
    prompts = convert.completion_prompts(body)
    requests = [
        choice
        for index, prompt in enumerate(prompts)
        for choice in convert.fan_out(
            convert.completion_request(body, prompt, f"{reply.id}-{index}"), n
        )
    ]
    echoes = [_echo(ctx, p) if body.echo else "" for p in prompts]
    text_of = ctx.text_of if body.logprobs is not None else None
    include_usage = convert.include_usage(body)
    if body.stream:
        streams = await streaming.open_streams(ctx.orchestrator, requests)
        return streaming.sse_response(
            streaming.completion_payloads(reply, streams, echoes, n, text_of, include_usage)
        )
    choices = await streaming.until_disconnected(request, _collect_all(ctx, requests))
    return JSONResponse(responses.completion(reply, choices, echoes, text_of, n))


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(request)]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    context_of(request).check_model(model)
    return _model_card(request)


@router.get("/health")
async def health(request: Request) -> Response:
    """200 while the gateway's gRPC health is SERVING; 503 while loading or draining."""
    if await context_of(request).is_serving():
        return Response(status_code=200)
    raise ApiError(503, "the gateway is not serving (still loading, or draining)")


def _generating(request: Request, model: str | None) -> HttpContext:
    ctx = context_of(request)
    ctx.check_model(model)
    require_generate(ctx.orchestrator.served)
    return ctx


async def _collect_all(
    ctx: HttpContext, requests: list[GenerationRequest]
) -> list[responses.Collected]:
    """Every choice's output; one failing (or the client gone) cancels the others."""
    tasks = [
        asyncio.ensure_future(responses.collect(ctx.orchestrator.generate(r))) for r in requests
    ]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _echo(ctx: HttpContext, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return ctx.orchestrator.prompts.tokenizer.decode(prompt)


def _model_card(request: Request) -> dict[str, Any]:
    ctx = context_of(request)
    served = ctx.orchestrator.served
    return {
        "id": ctx.model_name,
        "object": "model",
        "created": request.app.state.started,
        "owned_by": "meshserve",
        "root": served.model,
        "max_model_len": request.app.state.max_model_len or None,
        "task": served.task,
    }
