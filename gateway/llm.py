"""The offline API, mirroring vLLM's `LLM`: the same cores as the services, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.app import build_orchestrator, local_backends, served_model
from gateway.pipeline.pooling import MediaPrompt, PoolingOrchestrator, Prompt
from gateway.pipeline.transcription import Transcriber, TranscriptionRequest
from gateway.pipeline.types import GenerationRequest, MediaInput
from lm_service.config import EngineConfig
from protos.errors import InvalidRequest, Unsupported
from protos.modality import MEDIA_MODALITIES
from protos.sampling_params import SamplingParams, per_prompt
from protos.tasks import POOLING_TASKS, Task

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[Any, ...] | None
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """Shaped like vLLM's: `.outputs[0].text`, `.outputs[0].token_ids`, ..."""

    request_id: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...] | None
    outputs: tuple[CompletionOutput, ...]
    num_cached_tokens: int
    media_cache_hits: tuple[bool, ...] = ()
    finished: bool = True


@dataclass(frozen=True, slots=True)
class PoolingOutput:
    """`llm.encode(...)[i].outputs.data`: the task's raw pooled tensor."""

    data: Any  # torch.Tensor: embed [hidden], classify [num_labels], score [1], reward [rows, D]


@dataclass(frozen=True, slots=True)
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass(frozen=True, slots=True)
class ClassificationOutput:
    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass(frozen=True, slots=True)
class ScoringOutput:
    score: float


@dataclass(frozen=True, slots=True)
class PoolingRequestOutput:
    """Shaped like vLLM's: `.outputs.embedding`, `.outputs.probs`, `.outputs.score`, `.data`."""

    request_id: str
    outputs: PoolingOutput | EmbeddingOutput | ClassificationOutput | ScoringOutput
    prompt_token_ids: tuple[int, ...]
    finished: bool = True


class LLM:
    """Generate from a model in this process: text, images, videos and audio; or, with a
    pooling task, embed, classify, score and reward (embed and encode take media where the
    model's rule allows, e.g. LLaVA-NeXT `T / I`).

    Args:
        model: HF model id or local path.
        task: "generate", a pooling task ("embed", "classify", "score", "reward"), or
            "transcription" (a Whisper-style model; see `transcribe`).
        limit_mm_per_prompt: e.g. {"image": 2}; default 1 item per modality.
        override_pooler_config: pooling tasks: e.g. {"pooling_type": "MEAN", "normalize": False}.
        mm_processor_kwargs: arguments of the HF processor on every media item, e.g.
            {"do_pan_and_scan": True}; unknown keys are refused at start-up.
        engine_args: any other EngineConfig field (dtype, model_impl, block_size, ...).
    """

    def __init__(
        self,
        model: str,
        task: Task | str = Task.GENERATE,
        limit_mm_per_prompt: Mapping[str, int] | str | None = None,
        trust_remote_code: bool = False,
        override_pooler_config: Mapping[str, Any] | str | None = None,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
        **engine_args: Any,
    ) -> None:
        if task not in tuple(Task):
            tasks = ", ".join(Task)
            raise Unsupported(f"the offline LLM serves task {tasks}; not {task!r}")
        if override_pooler_config and task == Task.GENERATE:
            raise InvalidRequest("override_pooler_config applies to pooling tasks only")
        revision = engine_args.get("revision")  # NOTE: every in-process load reads it
        self.served = served_model(model, task, limit_mm_per_prompt, trust_remote_code, revision)
        config = EngineConfig(model=model, trust_remote_code=trust_remote_code, **engine_args)
        encoders, lm = local_backends(
            config,
            self.served,
            encoder_dtype=config.dtype,
            encoder_device=config.device,
            override_pooler_config=override_pooler_config,
            mm_processor_kwargs=mm_processor_kwargs,
        )
        self._lm = lm
        self._orchestrator = build_orchestrator(
            self.served, encoders, lm, trust_remote_code=trust_remote_code
        )
        self._pooling = PoolingOrchestrator.of(self._orchestrator)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-loop", daemon=True)
        self._thread.start()

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """One output per prompt, in order. A prompt is a str, {"prompt": str,
        "multi_modal_data": {...}, "mm_processor_kwargs": {...}} or {"prompt_token_ids": [...]};
        or a list of them. mm_processor_kwargs (vLLM's): the HF processor's arguments for this
        prompt's media, e.g. {"max_pixels": 50176}."""
        self._require_task("generate", "generate")
        items = prompts if isinstance(prompts, list | tuple) else [prompts]
        params = per_prompt(sampling_params, len(items))
        requests = [self._request(p, sp) for p, sp in zip(items, params, strict=True)]
        return self._run(self._collect_all(requests))

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        sampling_params: SamplingParams | None = None,
        add_generation_prompt: bool = True,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """One conversation (a list of messages) or several; content parts may hold media:
        {"type": "image", "image": PIL.Image}, {"type": "video", "video": frames},
        {"type": "audio", "audio": (waveform, sampling_rate)}, {"type": "text", "text": ...}.
        mm_processor_kwargs: as in `generate`, for every conversation's media."""
        self._require_task("chat", "generate")
        conversations = [messages] if messages and isinstance(messages[0], Mapping) else messages
        params = sampling_params or SamplingParams()
        requests = [
            dataclasses.replace(
                self._chat_request(list(c), params, add_generation_prompt),
                mm_processor_kwargs=dict(mm_processor_kwargs or {}),
            )
            for c in conversations
        ]
        return self._run(self._collect_all(requests))

    # --- pooling ---------------------------------------------------------------------
    def encode(self, prompts: Any) -> list[PoolingRequestOutput]:
        """The served pooling task's raw output per prompt (`.outputs.data`, a tensor)."""
        self._require_task("encode", *POOLING_TASKS)
        result = self._run(self._pooling.encode(_pooling_prompts(prompts), None))
        return [self._output(PoolingOutput(o.data), o.prompt_token_ids) for o in result.outputs]

    def embed(self, prompts: Any) -> list[PoolingRequestOutput]:
        """One embedding per prompt: `.outputs.embedding` (a list of floats)."""
        self._require_task("embed", "embed")
        result = self._run(self._pooling.embed(_pooling_prompts(prompts), None, None))
        return [
            self._output(EmbeddingOutput(o.data.tolist()), o.prompt_token_ids)
            for o in result.outputs
        ]

    def classify(self, prompts: Any) -> list[PoolingRequestOutput]:
        """Class probabilities per prompt: `.outputs.probs`."""
        self._require_task("classify", "classify")
        results, pooled = self._run(self._pooling.classify(_pooling_prompts(prompts), None))
        return [
            self._output(ClassificationOutput(r.probs), o.prompt_token_ids)
            for r, o in zip(results, pooled.outputs, strict=True)
        ]

    def score(
        self, text_1: str | Sequence[str], text_2: str | Sequence[str]
    ) -> list[PoolingRequestOutput]:
        """`.outputs.score` per pair: one text_1 against each text_2, or pairs one to one.
        A cross-encoder (task "score") reads each pair; an embedding model (task "embed")
        gives the cosine of the two embeddings."""
        self._require_task("score", "score", "embed")
        first = [text_1] if isinstance(text_1, str) else list(text_1)
        second = [text_2] if isinstance(text_2, str) else list(text_2)
        result = self._run(self._pooling.score(first, second, None))
        return [
            self._output(ScoringOutput(s), ids)
            for s, ids in zip(result.scores, result.prompt_token_ids, strict=True)
        ]

    # --- transcription -----------------------------------------------------------------
    def transcribe(
        self,
        audio: bytes | tuple[Any, int],
        language: str | None = None,
        task: str = "transcribe",
        sampling_params: SamplingParams | None = None,
    ) -> RequestOutput:
        """Speech to text on the engine: `audio` is the file bytes or (waveform,
        sampling_rate), cut into the model's 30 s windows and transcribed in order; `language`
        e.g. "en", or None to detect it from the first window as HF's `generate` does
        (English-only checkpoints take none); `task` "transcribe" or "translate"."""
        self._require_task("transcribe", "transcription")
        request = TranscriptionRequest(
            f"offline-{next(self._ids)}",
            bytes(audio) if isinstance(audio, bytes | bytearray) else audio,
            sampling_params or SamplingParams(),
            language,
            task,
        )
        chunk = self._run(Transcriber.of(self._orchestrator).transcribe_all(request))
        completion = CompletionOutput(0, chunk.text, chunk.token_ids, None, chunk.finish_reason)
        return RequestOutput(request.request_id, None, None, (completion,), num_cached_tokens=0)

    def apply_model(self, func: Callable[[Any], T]) -> list[T]:
        """Runs `func` on the model of each worker (there is one here), like vLLM."""
        if self._lm.pooling is not None:
            return [func(self._lm.pooling.model)]
        engine = self._lm.loop.engine
        return [self._lm.loop.call(lambda _: func(engine.loaded.model))]

    def get_tokenizer(self) -> Any:
        return self._orchestrator.prompts.tokenizer

    def close(self) -> None:
        self._run(self._lm.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # --- helpers ---------------------------------------------------------------------
    def _require_task(self, method: str, *tasks: str) -> None:
        task = self.served.task
        if task not in tasks:
            hint = "a pooling task" if method == "encode" else f"task={tasks[0]!r}"
            raise Unsupported(f"LLM(task={task!r}) cannot {method}; create the LLM with {hint}")

    def _output(self, outputs: Any, prompt_token_ids: Sequence[int]) -> PoolingRequestOutput:
        return PoolingRequestOutput(f"offline-{next(self._ids)}", outputs, tuple(prompt_token_ids))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _collect_all(self, requests: list[GenerationRequest]) -> list[RequestOutput]:
        return list(await asyncio.gather(*(self._collect(r) for r in requests)))

    async def _collect(self, request: GenerationRequest) -> RequestOutput:
        text, ids, logprobs = [], [], []
        last = None
        async with contextlib.aclosing(self._orchestrator.generate(request)) as chunks:
            async for chunk in chunks:
                text.append(chunk.text)
                ids.extend(chunk.token_ids)
                logprobs.extend(chunk.logprobs)
                last = chunk
        completion = CompletionOutput(
            index=0,
            text="".join(text),
            token_ids=tuple(ids),
            logprobs=tuple(logprobs) if request.sampling_params.logprobs is not None else None,
            finish_reason=last.finish_reason if last else None,
        )
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=(last.prompt_token_ids or None) if last else None,
            outputs=(completion,),
            num_cached_tokens=last.usage.cached_prompt_tokens if last and last.usage else 0,
            media_cache_hits=last.media_cache_hits if last else (),
        )

    def _request(self, prompt: Any, params: SamplingParams) -> GenerationRequest:
        request_id = f"offline-{next(self._ids)}"
        if isinstance(prompt, str):
            return GenerationRequest(request_id, params, prompt=prompt)
        if not isinstance(prompt, Mapping):
            raise InvalidRequest(f"a prompt is a str or a dict, got {type(prompt).__name__}")
        media = _media_from_data(prompt.get("multi_modal_data") or {})
        kwargs = _processor_kwargs(prompt)
        if "prompt_token_ids" in prompt:
            return GenerationRequest(
                request_id,
                params,
                prompt_token_ids=list(prompt["prompt_token_ids"]),
                media=media,
                mm_processor_kwargs=dict(kwargs),
            )
        return GenerationRequest(
            request_id,
            params,
            prompt=prompt["prompt"],
            media=media,
            mm_processor_kwargs=dict(kwargs),
        )

    def _chat_request(
        self, conversation: list[Mapping[str, Any]], params: SamplingParams, add_gen: bool
    ) -> GenerationRequest:
        if not conversation:
            raise InvalidRequest("a conversation needs at least one message")
        messages, media = [], []
        for index, message in enumerate(conversation):
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str) or content is None:
                messages.append(dict(message))
                continue
            if not isinstance(content, list | tuple):
                raise InvalidRequest(
                    f"message {index}: content must be a string or a list of parts, "
                    f"got {type(content).__name__}"
                )
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind in MEDIA_MODALITIES:
                    media.append(_media_input(kind, part.get(kind)))
                    parts.append({"type": kind})
                elif kind == "text":
                    parts.append(dict(part))
                else:
                    raise InvalidRequest(
                        f"message {index}: unknown content part {part!r}; parts are "
                        '{"type": "text" | "image" | "video" | "audio", ...}'
                    )
            messages.append({**message, "content": parts})
        return GenerationRequest(
            f"offline-{next(self._ids)}",
            params,
            messages=messages,
            media=tuple(media),
            add_generation_prompt=add_gen,
        )


def _pooling_prompts(prompts: Any) -> list[Prompt]:
    """str, {"prompt": str}, {"prompt_token_ids": [...]}, {"prompt": str, "multi_modal_data":
    {...}}, or a list of them -> texts / ids / media prompts."""
    items = prompts if isinstance(prompts, list | tuple) else [prompts]
    out: list[Prompt] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"a prompt is a str or a dict, got {type(item).__name__}")
        if item.get("multi_modal_data"):
            if "prompt" not in item:
                raise InvalidRequest("multi_modal_data needs a text prompt with placeholders")
            media = _media_from_data(item["multi_modal_data"])
            out.append(MediaPrompt(str(item["prompt"]), media, False, _processor_kwargs(item)))
        elif "prompt_token_ids" in item:
            out.append([int(t) for t in item["prompt_token_ids"]])
        else:
            out.append(str(item["prompt"]))
    return out


def _processor_kwargs(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """A prompt dict's mm_processor_kwargs (vLLM's), as a dict."""
    kwargs = prompt.get("mm_processor_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise InvalidRequest(f"mm_processor_kwargs must be a dict, got {type(kwargs).__name__}")
    return dict(kwargs)


def _media_from_data(data: Mapping[str, Any]) -> tuple[MediaInput, ...]:
    """vLLM's multi_modal_data -> media inputs, modality by modality in prompt order."""
    media: list[MediaInput] = []
    for modality in MEDIA_MODALITIES:
        value = data.get(modality)
        if value is None:
            continue
        values = value if _is_item_list(modality, value) else [value]
        media.extend(_media_input(modality, v) for v in values)
    unknown = set(data) - {"image", "video", "audio"}
    if unknown:
        raise InvalidRequest(f"unknown multi_modal_data key(s): {sorted(unknown)}")
    return tuple(media)


def _is_item_list(modality: str, value: Any) -> bool:
    if not isinstance(value, list):
        return False
    if modality == "video":
        # a video may itself be a list of frames
        import numpy as np

        return not value or not isinstance(value[0], np.ndarray) or value[0].ndim == 4
    return True


def _media_input(modality: str, value: Any) -> MediaInput:
    import torch

    if isinstance(value, bytes | bytearray):
        return MediaInput(modality, data=bytes(value))
    if isinstance(value, torch.Tensor) and modality != "video" and value.dim() == 2:
        return MediaInput(modality, embeddings=value)
    if isinstance(value, Mapping) and "embeddings" in value:
        grid = value.get("grid_thw")
        return MediaInput(
            modality,
            embeddings=value["embeddings"],
            grid_thw=tuple(int(g) for g in grid) if grid is not None else None,
        )
    return MediaInput(modality, decoded=value)
