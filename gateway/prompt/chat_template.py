"""Chat templates: finding the model's template, and the content shape it expects.

A template that loops over a message's content expects a list of OpenAI-style parts; one that
does not expects a string, where each media part becomes the model's placeholder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from protos.errors import InvalidRequest

# OpenAI / HF content part types -> the modality they carry ("text" for text).
PART_KINDS: Mapping[str, str] = {
    "text": "text",
    "input_text": "text",
    "image": "image",
    "image_url": "image",
    "image_embeds": "image",
    "video": "video",
    "video_url": "video",
    "video_embeds": "video",
    "audio": "audio",
    "audio_url": "audio",
    "input_audio": "audio",
    "audio_embeds": "audio",
}

# A template that loops over a message's content expects a list of parts (OpenAI format);
# one that does not expects a string.
_CONTENT_LOOP = re.compile(
    r"for\s+\w+\s+in\s+(?:\w+(?:\[\s*['\"]content['\"]\s*\]|\.content)|content\b)"
)
_CHAT_TEMPLATE_FILES: tuple[str, ...] = (
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
)


def read_chat_template(model: str | Path, tokenizer: Any) -> str | None:
    """The model's chat template: the tokenizer's, else one saved next to the processor."""
    template = _pick_template(getattr(tokenizer, "chat_template", None))
    if template:
        return template
    for filename in _CHAT_TEMPLATE_FILES:
        text = _read_model_file(model, filename)
        if text is None:
            continue
        template = text if filename.endswith(".jinja") else json.loads(text).get("chat_template")
        template = _pick_template(template)
        if template:
            return template
    return None


def _pick_template(template: Any) -> str | None:
    """A template string from a string, a {name: template} dict or a [{name, template}] list."""
    if isinstance(template, list):
        template = {entry["name"]: entry["template"] for entry in template}
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def _read_model_file(model: str | Path, filename: str) -> str | None:
    path = Path(model) / filename
    if path.is_file():
        return path.read_text()
    if Path(model).is_dir():
        return None
    from transformers.utils.hub import cached_file

    resolved = cached_file(
        str(model),
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return Path(resolved).read_text() if resolved else None


def uses_content_parts(template: str) -> bool:
    """Whether a chat template loops over `message['content']` (expects a list of parts)."""
    return _CONTENT_LOOP.search(template) is not None


def part_kind(part: Any) -> str:
    """ "text", "image", "video" or "audio" for one content part; InvalidRequest otherwise."""
    kind = PART_KINDS.get(part.get("type", "")) if isinstance(part, Mapping) else None
    if kind is None:
        shown = part.get("type") if isinstance(part, Mapping) else type(part).__name__
        raise InvalidRequest(
            f"Unknown content part type {shown!r}; expected text, image, video or audio"
        )
    return kind


def normalize_content(content: Any, as_parts: bool, placeholder: Callable[[str], str]) -> Any:
    """A message's content in the shape the template expects.

    With `as_parts`, a list of `{"type": "text", "text": ...}` / `{"type": <modality>}` parts;
    otherwise a string where each media part becomes the model's placeholder (joined by "\\n").
    """
    if content is None:
        return None
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if as_parts else content
    parts = [(part_kind(part), part) for part in content]
    if as_parts:
        return [
            {"type": "text", "text": str(p.get("text", ""))} if k == "text" else {"type": k}
            for k, p in parts
        ]
    return "\n".join(str(p.get("text", "")) if k == "text" else placeholder(k) for k, p in parts)
