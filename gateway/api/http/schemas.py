"""The request bodies of the OpenAI API (and vLLM's extras), as pydantic models.

Fields the OpenAI clients send that we do not use are ignored; a field we cannot honour is
refused by `convert` with a sentence. Optional fields accept `null` as "unset".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Body):
    include_usage: bool = False


class ImageURL(Body):
    url: str
    detail: str | None = None


class MediaURL(Body):
    url: str
    # meshserve's extras for video: frame sampling
    fps: float | None = None
    num_frames: int | None = None


class InputAudio(Body):
    data: str  # base64 of the file
    format: str = "wav"


class ContentPart(Body):
    """One part of a message's content; `type` names the field that carries it."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: MediaURL | None = None
    audio_url: MediaURL | None = None
    input_audio: InputAudio | None = None
    # precomputed embeddings: base64 of torch.save(tensor [num_tokens, hidden]), or vLLM's
    # {"image_embeds": <base64>, "image_grid_thw": <base64 tensor | [t, h, w]>}
    image_embeds: str | dict[str, Any] | None = None
    video_embeds: str | dict[str, Any] | None = None
    audio_embeds: str | dict[str, Any] | None = None


class ChatMessage(Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class SamplingFields(Body):
    """What chat and completions share: sampling, stopping and streaming."""

    model: str | None = None
    n: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # vLLM's extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # vLLM's chat template extras
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None
    # vLLM's: the HF processor's arguments for this request's media, e.g. {"max_pixels": 50176}
    mm_processor_kwargs: dict[str, Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(Body):
    """OpenAI's `input`, or vLLM's chat form: `messages` (media parts allowed where the
    model's rule takes them), rendered without a generation prompt unless asked."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


class ScoreRequest(Body):
    """vLLM's /score: text_1 against each text_2 (1 x N), or pairs one to one (N x N)."""

    model: str | None = None
    text_1: str | list[str]
    text_2: str | list[str]


class ClassifyRequest(Body):
    """vLLM's /classify."""

    model: str | None = None
    input: str | list[str]
