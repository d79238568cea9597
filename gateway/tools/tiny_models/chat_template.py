"""The ChatML chat template every tiny generative model ships, with its media placeholders."""

from __future__ import annotations

from collections.abc import Sequence


def _part_branch(kinds: Sequence[str], placeholder: str | None, what: str) -> str:
    types = ", ".join(repr(kind) for kind in kinds)
    body = placeholder or "{{- raise_exception('This model does not accept " + what + " input') -}}"
    return "{%- elif part['type'] in (" + types + ") -%}" + body


def build_chat_template(
    *,
    bos: bool,
    image: str | None = None,
    video: str | None = None,
    audio: str | None = None,
) -> str:
    """A ChatML template: string content, or a list of {"type": text|image|video|audio} parts.

    Each placeholder is Jinja text emitted for one media part; None makes that part an error.
    """
    return (
        "{%- set ns = namespace(image=0, video=0, audio=0) -%}"
        + ("{{- bos_token -}}" if bos else "")
        + "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
        + _part_branch(("image", "image_url"), image, "image")
        + _part_branch(("video", "video_url"), video, "video")
        + _part_branch(("audio", "audio_url", "input_audio"), audio, "audio")
        + "{%- else -%}{{- raise_exception('Unknown content part type: ' + part['type']) -}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


LLAVA_IMAGE_PART = "{{- '<image>' -}}"
QWEN2_VL_IMAGE_PART = "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
QWEN2_VL_VIDEO_PART = "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
QWEN2_AUDIO_PART = (
    "{%- set ns.audio = ns.audio + 1 -%}"
    "{{- 'Audio ' + ns.audio|string + ': <|audio_bos|><|AUDIO|><|audio_eos|>\\n' -}}"
)
