"""The pipeline's chunks -> OpenAI response objects (chat completions, completions, chunks,
logprobs, usage)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway.pipeline.types import GenerationChunk, Usage


@dataclass(frozen=True, slots=True)
class Reply:
    """What every object answering one request shares: its id, model and creation time."""

    model: str
    prefix: str  # "chatcmpl", "cmpl", "embd", ...
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", f"{self.prefix}-{uuid.uuid4().hex}")

    def object(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            **fields,
        }


class Collected(NamedTuple):
    """One choice's whole output."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[Any, ...]
    finish_reason: str | None
    usage: Usage | None


async def collect(chunks: AsyncIterator[GenerationChunk]) -> Collected:
    """Reads a stream to its end; closing it early (cancelled) aborts the LM request."""
    texts: list[str] = []
    token_ids: list[int] = []
    logprobs: list[Any] = []
    last: GenerationChunk | None = None
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            texts.append(chunk.text)
            token_ids.extend(chunk.token_ids)
            logprobs.extend(chunk.logprobs)
            last = chunk
    reason = last.finish_reason if last else None
    usage = last.usage if last else None
    return Collected("".join(texts), tuple(token_ids), tuple(logprobs), reason, usage)


def usage_object(usages: Sequence[Usage | None], n: int = 1) -> dict[str, Any]:
    """OpenAI usage over choices `prompt_index * n + i`: each prompt counted once."""
    known = [(i, u) for i, u in enumerate(usages) if u is not None]
    prompt = sum(u.prompt_tokens for i, u in known if i % n == 0)
    cached = sum(u.cached_prompt_tokens for i, u in known if i % n == 0)
    completion = sum(u.completion_tokens for _, u in known)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


# ------------------------------------------------------------------------------ logprobs


def _position(entry: Any) -> tuple[int, float, list[tuple[int, float]]]:
    """(token id, logprob, top [(id, logprob)]) of a local LogprobEntry or a remote proto."""
    if hasattr(entry, "sampled"):  # common_pb2.PositionLogprobs from a remote LM
        top = [(t.token_id, t.logprob) for t in entry.top]
        return entry.sampled.token_id, entry.sampled.logprob, top
    return (
        entry.token_id,
        entry.logprob,
        list(zip(entry.top_token_ids, entry.top_logprobs, strict=True)),
    )


class TokenText:
    """Each token id's own text, as logprobs show it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id])
        return text

    def entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(text_of: TokenText, entries: Sequence[Any]) -> dict[str, Any]:
    content = []
    for entry in entries:
        token_id, logprob, top = _position(entry)
        item = text_of.entry(token_id, logprob)
        item["top_logprobs"] = [text_of.entry(t, lp) for t, lp in top]
        content.append(item)
    return {"content": content}


def completion_logprobs(text_of: TokenText, entries: Sequence[Any], offset: int = 0) -> dict:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for entry in entries:
        token_id, logprob, top = _position(entry)
        tokens.append(text_of(token_id))
        token_logprobs.append(logprob)
        tops.append({text_of(t): lp for t, lp in top})
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


# ------------------------------------------------------------------------------ objects


def chat_completion(
    reply: Reply, choices: Sequence[Collected], text_of: TokenText | None
) -> dict[str, Any]:
    """A whole chat.completion; `text_of` when logprobs were asked for."""
    return reply.object(
        "chat.completion",
        choices=[
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": chat_logprobs(text_of, choice.logprobs) if text_of else None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(choices)
        ],
        usage=usage_object([c.usage for c in choices], len(choices)),  # one prompt
    )


def chat_chunk(
    reply: Reply,
    index: int,
    delta: dict[str, Any],
    chunk: GenerationChunk | None = None,
    text_of: TokenText | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "delta": delta,
        "logprobs": None,
        "finish_reason": None,
    }
    if chunk is not None:
        choice["finish_reason"] = chunk.finish_reason
        if text_of is not None:
            choice["logprobs"] = chat_logprobs(text_of, chunk.logprobs)
    return reply.object("chat.completion.chunk", choices=[choice])


def completion(
    reply: Reply,
    choices: Sequence[Collected],
    echoes: Sequence[str],
    text_of: TokenText | None,
    n: int,
) -> dict[str, Any]:
    """A whole text_completion; choice `i` answers prompt `i // n` (echoed when asked)."""
    items = []
    for index, choice in enumerate(choices):
        echo = echoes[index // n]
        logprobs = completion_logprobs(text_of, choice.logprobs, len(echo)) if text_of else None
        items.append(
            {
                "index": index,
                "text": echo + choice.text,
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason,
            }
        )
    return reply.object(
        "text_completion", choices=items, usage=usage_object([c.usage for c in choices], n)
    )


def completion_chunk(
    reply: Reply, index: int, text: str, chunk: GenerationChunk, text_of: TokenText | None
) -> dict[str, Any]:
    logprobs = completion_logprobs(text_of, chunk.logprobs) if text_of else None
    choice = {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": chunk.finish_reason,
    }
    return reply.object("text_completion", choices=[choice])
