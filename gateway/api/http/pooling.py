"""POST /v1/embeddings, and vLLM's /score and /classify (also under /v1), for pooling models.

The gateway's PoolingOrchestrator answers them, as it answers gRPC Embed, Score and Classify.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from gateway.api.http.content import conversation
from gateway.api.http.context import HttpContext, context_of
from gateway.api.http.responses import Reply
from gateway.api.http.schemas import ClassifyRequest, EmbeddingRequest, ScoreRequest
from gateway.api.http.streaming import until_disconnected
from gateway.pipeline.pooling import MediaPrompt, Prompt
from gateway.pipeline.types import Usage
from protos.errors import InvalidRequest, Unsupported

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    ctx = context_of(request)
    ctx.check_model(body.model)
    if body.dimensions is not None:
        raise Unsupported("dimensions is not supported; leave it out for the model's full size")
    work = ctx.pooling.embed(await _embedding_prompts(body, ctx), None, None)
    result = await until_disconnected(request, work)
    as_base64 = body.encoding_format == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(o.data, as_base64)}
        for i, o in enumerate(result.outputs)
    ]
    return {"object": "list", "data": data, "model": ctx.model_name, "usage": _usage(result.usage)}


@router.post("/score")
@router.post("/v1/score")
async def score(body: ScoreRequest, request: Request) -> dict[str, Any]:
    ctx = context_of(request)
    ctx.check_model(body.model)
    work = ctx.pooling.score(_texts(body.text_1), _texts(body.text_2), None)
    result = await until_disconnected(request, work)
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(result.scores)]
    reply = Reply(ctx.model_name, "score")
    return reply.object("list", data=data, usage=_usage(result.usage))


@router.post("/classify")
@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    ctx = context_of(request)
    ctx.check_model(body.model)
    results, pooled = await until_disconnected(
        request, ctx.pooling.classify(_texts(body.input), None)
    )
    data = [
        {
            "index": i,
            "label": r.label,
            "probs": r.probs,
            "num_classes": len(r.probs),
        }
        for i, r in enumerate(results)
    ]
    reply = Reply(ctx.model_name, "classify")
    return reply.object("list", data=data, usage=_usage(pooled.usage))


async def _embedding_prompts(body: EmbeddingRequest, ctx: HttpContext) -> list[Prompt]:
    """`input`'s prompts, or the one conversation of `messages` with its media."""
    if (body.input is None) == (body.messages is None):
        raise InvalidRequest("an embedding request takes either input or messages")
    if body.input is not None:
        return _prompts(body.input)
    messages, media = await conversation(body.messages, ctx.options.allowed_media_domains)
    add_generation_prompt = bool(body.add_generation_prompt)  # vLLM's default: False
    text = ctx.orchestrator.prompts.render_chat(messages, add_generation_prompt)
    return [MediaPrompt(text, tuple(media), has_text=_has_text_part(messages))]


def _has_text_part(messages: list[dict[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if any(p.get("type") == "text" and str(p.get("text", "")).strip() for p in parts or ()):
            return True
    return False


def _prompts(value: str | list[str] | list[int] | list[list[int]]) -> list[Prompt]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]  # one prompt of token ids
    return list(value)


def _texts(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _vector(data: Any, as_base64: bool) -> list[float] | str:
    """float32 values, or base64 of their little-endian bytes (what the openai client decodes)."""
    values = data.float().cpu().numpy()
    if not as_base64:
        return values.tolist()
    return base64.b64encode(values.astype(np.dtype("<f4")).tobytes()).decode("ascii")


def _usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
