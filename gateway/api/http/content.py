"""OpenAI message content -> the pipeline's messages and media items.

Media parts: `image_url`, `video_url`, `audio_url` (data: URLs with base64; http(s) URLs only
from `--allowed-media-domains`), `input_audio` ({data, format}) and precomputed embeddings
(`image_embeds`, `video_embeds`, `audio_embeds`: base64 of `torch.save(tensor)`). Every
refusal names the part, e.g. "messages[0].content[1]: ...".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from gateway.api.http.options import MAX_URL_MEDIA_BYTES, URL_FETCH_SECONDS
from gateway.api.http.schemas import ChatMessage, ContentPart
from gateway.pipeline.types import MediaInput
from protos.errors import InvalidRequest, LimitExceeded

ROLES = ("system", "developer", "user", "assistant", "tool")
TEXT_PARTS = ("text", "input_text")
URL_PARTS = {"image_url": "image", "video_url": "video", "audio_url": "audio"}
EMBEDS_PARTS = {"image_embeds": "image", "video_embeds": "video", "audio_embeds": "audio"}
PART_TYPES = (*TEXT_PARTS, *URL_PARTS, "input_audio", *EMBEDS_PARTS)


async def conversation(
    messages: Sequence[ChatMessage], allowed_domains: Sequence[str]
) -> tuple[list[dict[str, Any]], list[MediaInput]]:
    """The messages as the chat template takes them (media parts as {"type": modality}) and
    the media items in prompt order."""
    if not messages:
        raise InvalidRequest("messages: a chat request needs at least one message")
    rendered: list[dict[str, Any]] = []
    media: list[MediaInput] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role not in ROLES:
            raise InvalidRequest(
                f"{where}.role: {message.role!r} is not a role; use one of {', '.join(ROLES)}"
            )
        turn: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.name is not None:
            turn["name"] = message.name
        if isinstance(message.content, list):
            parts = []
            for number, part in enumerate(message.content):
                parts.append(
                    await _part(part, f"{where}.content[{number}]", media, allowed_domains)
                )
            turn["content"] = parts
        rendered.append(turn)
    return rendered, media


async def _part(
    part: ContentPart, where: str, media: list[MediaInput], allowed_domains: Sequence[str]
) -> dict[str, Any]:
    if part.type in TEXT_PARTS:
        if part.text is None:
            raise InvalidRequest(f"{where}: a {part.type} part needs a text string")
        return {"type": "text", "text": part.text}
    if part.type in URL_PARTS:
        item = await _url_part(part, URL_PARTS[part.type], where, allowed_domains)
    elif part.type == "input_audio":
        item = _input_audio(part, where)
    elif part.type in EMBEDS_PARTS:
        item = _embeds_part(part, EMBEDS_PARTS[part.type], where)
    else:
        raise InvalidRequest(
            f"{where}: unknown content part type {part.type!r}; use one of {', '.join(PART_TYPES)}"
        )
    media.append(item)
    return {"type": item.modality}


async def _url_part(
    part: ContentPart, modality: str, where: str, allowed_domains: Sequence[str]
) -> MediaInput:
    value = getattr(part, part.type)
    if value is None:
        raise InvalidRequest(f"{where}: a {part.type} part needs {{{part.type!r}: {{'url': ...}}}}")
    options: dict[str, Any] = {}
    if getattr(value, "fps", None) is not None:
        options["fps"] = float(value.fps)
    if getattr(value, "num_frames", None) is not None:
        options["num_frames"] = int(value.num_frames)
    data = await media_bytes(value.url, where, allowed_domains)
    return MediaInput(modality, data=data, options=options)


def _input_audio(part: ContentPart, where: str) -> MediaInput:
    if part.input_audio is None:
        raise InvalidRequest(f"{where}: an input_audio part needs {{'data': ..., 'format': ...}}")
    return MediaInput("audio", data=_base64(part.input_audio.data, f"{where}.input_audio.data"))


def _embeds_part(part: ContentPart, modality: str, where: str) -> MediaInput:
    value = getattr(part, part.type)
    grid = None
    if isinstance(value, dict):
        grid = value.get(f"{modality}_grid_thw")
        value = value.get(part.type)
    if not isinstance(value, str):
        raise InvalidRequest(
            f"{where}: a {part.type} part needs base64 of torch.save(tensor), or "
            f"{{{part.type!r}: <base64>, '{modality}_grid_thw': [t, h, w]}}"
        )
    embeddings = _tensor(value, f"{where}.{part.type}")
    if embeddings.dim() == 3 and embeddings.shape[0] == 1:
        embeddings = embeddings[0]  # [1, num_tokens, hidden] -> [num_tokens, hidden]
    return MediaInput(modality, embeddings=embeddings, grid_thw=_grid(grid, where))


def _grid(value: Any, where: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    grid = (
        _tensor(value, f"{where} grid_thw").reshape(-1).tolist()
        if isinstance(value, str)
        else value
    )
    if not isinstance(grid, list) or len(grid) != 3 or not all(isinstance(g, int) for g in grid):
        raise InvalidRequest(f"{where}: grid_thw must be three integers [t, h, w], got {grid!r}")
    return (grid[0], grid[1], grid[2])


def _tensor(text: str, where: str) -> Any:
    import torch

    raw = _base64(text, where)
    try:
        value = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes are, it is the user's input
        raise InvalidRequest(f"{where}: not a torch.save() tensor ({exc})") from exc
    if not isinstance(value, torch.Tensor):
        raise InvalidRequest(f"{where}: expected a tensor, got {type(value).__name__}")
    return value


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{where}: not valid base64 ({exc})") from exc


async def media_bytes(url: str, where: str, allowed_domains: Sequence[str]) -> bytes:
    """The file behind a data: URL, or fetched from an http(s) URL of an allowed host."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequest(f"{where}: a data: URL must be data:<mime type>;base64,<data>")
        return _base64(payload, where)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(
            f"{where}: URL scheme {parts.scheme or 'none'!r} is not supported; send a data: URL "
            "(base64) or an http(s) URL"
        )
    host = (parts.hostname or "").lower()
    if host not in allowed_domains:
        raise InvalidRequest(
            f"{where}: media URLs from {host!r} are not allowed; send the file as a data: URL, "
            f"or start the gateway with --allowed-media-domains {host}"
        )
    return await asyncio.to_thread(_download, url, where)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could lead to a host that is not allowed: it is an error instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _download(url: str, where: str) -> bytes:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=URL_FETCH_SECONDS) as response:
            data = response.read(MAX_URL_MEDIA_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InvalidRequest(f"{where}: cannot fetch {url}: {exc}") from exc
    if len(data) > MAX_URL_MEDIA_BYTES:
        raise LimitExceeded(f"{where}: {url} is larger than {MAX_URL_MEDIA_BYTES} bytes")
    return data
