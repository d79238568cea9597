"""validate -> encode -> build prompt -> LM stream -> detokenize -> stop strings -> usage.

Pure asyncio; reaches the services only through EncoderBackend and LMBackend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.backends.base import EncoderBackend, LMBackend, LMRequest
from gateway.pipeline.cross_attention import cross_attention_inputs
from gateway.pipeline.media_store import MediaStore
from gateway.pipeline.output_stream import OutputStream
from gateway.pipeline.transcription import Transcriber
from gateway.pipeline.types import (
    GenerationChunk,
    GenerationRequest,
    MediaInput,
    StageTimings,
)
from gateway.prompt.builder import PromptBuilder
from gateway.prompt.slots import BuiltPrompt, MediaSlot
from gateway.rules.modalities import ModalitySpec
from protos.encoder_messages import MediaItem
from protos.errors import InvalidRequest, Unsupported
from protos.lm_messages import MultiModalSpan


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What the gateway serves: the model's identity, rules and limits."""

    model: str
    architecture: str
    task: str
    spec: ModalitySpec
    limits: Mapping[str, int]
    revision: str | None = None  # the hub revision every in-process load reads


class Orchestrator:
    """Runs one request across the encoders and the LM; written once for local and remote."""

    def __init__(
        self,
        served: ServedModel,
        prompts: PromptBuilder,
        encoders: EncoderBackend,
        lm: LMBackend,
        media_store: MediaStore,
        stream_interval: int = 1,
    ) -> None:
        if stream_interval < 1:
            raise InvalidRequest(f"stream_interval must be >= 1, got {stream_interval}")
        self.served = served
        self.prompts = prompts
        self.encoders = encoders
        self.lm = lm
        self.media_store = media_store
        # tokens per streamed chunk (SGLang's --stream-interval); the last chunk may hold fewer
        self.stream_interval = stream_interval
        # --task transcription: built here, at start-up (it reads the generation config)
        self.transcriber = Transcriber.build(self) if served.task == "transcription" else None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Streams the answer to one request; raises the core errors for bad input."""
        clock = _Clock(request.timeout)
        self.validate(request)
        validate_ms = clock.lap()
        encoded = await self.encode(
            request.media, clock.left("encoding its media"), request.mm_processor_kwargs
        )
        encode_ms = clock.lap()
        built = self._build_prompt(request, encoded)
        prompt_ms = clock.lap()
        states, windows = cross_attention_inputs(built, encoded)
        lm_request = LMRequest(
            # unique per call: clients may reuse their own ids, the LM must not see clashes
            request_id=f"{request.request_id}-{uuid.uuid4().hex[:12]}",
            prompt_token_ids=built.token_ids,
            sampling_params=request.sampling_params,
            mm_spans=() if states is not None else _spans(built, encoded),
            mrope_positions=built.mrope_positions,
            encoder_states=states,
            cross_windows=windows,
        )
        timings = StageTimings(validate_ms=validate_ms, encode_ms=encode_ms, prompt_ms=prompt_ms)
        outputs = OutputStream(
            request,
            lm_request.prompt_token_ids,
            self.prompts.tokenizer,
            timings,
            clock.total,
            tuple(bool(e.cache_hit) for e in encoded),
            self.stream_interval,
        )
        # NOTE: every stream on the request path is closed explicitly: when our consumer stops
        # (aclose(), a cancelled client), the LM stream closes now, not when asyncio collects it
        async with contextlib.aclosing(
            self.lm.generate(lm_request, clock.left("generating"))
        ) as stream:
            async for out in stream:
                chunk = outputs.on_output(out)
                if chunk is None:
                    continue
                if chunk.finish_reason is not None:
                    # the LM request ends (a stop string aborts it) before the client even
                    # reads the last chunk
                    await stream.aclose()
                    yield chunk
                    return
                yield chunk

    def validate(self, request: GenerationRequest) -> None:
        """The seed's modality rules and the configured item limits."""
        self.check_media(request.media, _has_text(request))

    def check_media(self, media: Sequence[MediaInput], has_text: bool) -> None:
        """The seed's modality rule and the item limits for one prompt's media."""
        counts: dict[str, int] = {}
        embeds: set[str] = set()
        for item in media:
            counts[item.modality] = counts.get(item.modality, 0) + 1
            if item.is_embeddings:
                embeds.add(item.modality)
        self.served.spec.check(
            counts, has_text, embeds, dict(self.served.limits), self.served.architecture
        )
        missing = set(counts) - self.encoders.modalities()
        if missing:
            raise Unsupported(f"no {sorted(missing)[0]} encoder is configured for this gateway")

    async def media_prompt(
        self,
        text: str,
        media: Sequence[MediaInput],
        timeout: float | None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[BuiltPrompt, tuple[MultiModalSpan, ...]]:
        """A raw prompt's token ids with its (already checked) media encoded and spliced in,
        and the spans that carry their embeddings (pooling inputs with media).
        `processor_kwargs`: the request's mm_processor_kwargs, as in `encode`."""
        encoded = await self.encode(media, timeout, processor_kwargs)
        built = self.prompts.build(text, _slots(media, encoded))
        return built, _spans(built, encoded)

    async def encode(
        self,
        media: Sequence[MediaInput],
        timeout: float | None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """Encodes every item (modalities in parallel); handles come from the media store.
        `processor_kwargs`: the request's mm_processor_kwargs, for the items sent as files."""
        results: list[Any] = [None] * len(media)
        by_modality: dict[str, list[int]] = {}
        for index, item in enumerate(media):
            if item.handle is not None:
                # encoded earlier (PutMedia): nothing runs now, which is a cache hit
                results[index] = self.media_store.get(item.handle, item.modality)._replace(
                    cache_hit=True
                )
            else:
                by_modality.setdefault(item.modality, []).append(index)
        jobs = [
            self._encode_one_modality(modality, indices, media, timeout, processor_kwargs or {})
            for modality, indices in by_modality.items()
        ]
        for indices, encoded in zip(by_modality.values(), await asyncio.gather(*jobs), strict=True):
            for index, result in zip(indices, encoded, strict=True):
                results[index] = result
        return results

    async def put_media(self, item: MediaInput, timeout: float | None) -> tuple[str, Any]:
        """Encodes one item once and stores it under a handle for later prompts."""
        self.served.spec.check(
            {item.modality: 1},
            False,
            {item.modality} if item.is_embeddings else set(),
            dict(self.served.limits),
            self.served.architecture,
        )
        (result,) = await self.encode([item], timeout)
        return self.media_store.put(item.modality, result), result

    async def _encode_one_modality(
        self,
        modality: str,
        indices: list[int],
        media: Sequence[MediaInput],
        timeout: float | None,
        processor_kwargs: Mapping[str, Any],
    ) -> list[Any]:
        items = [_media_item(media[i], processor_kwargs) for i in indices]
        return await self.encoders.encode(modality, items, timeout)

    def _build_prompt(self, request: GenerationRequest, encoded: list[Any]) -> BuiltPrompt:
        if request.prompt_token_ids is not None:
            if any(not isinstance(t, int) or t < 0 for t in request.prompt_token_ids):
                raise InvalidRequest("prompt_token_ids must be non-negative integers")
            if request.media:
                raise InvalidRequest("media needs a text prompt with placeholders, not token ids")
            return BuiltPrompt(list(request.prompt_token_ids), (), None)
        if request.prompt is not None:
            text = request.prompt
        else:
            text = self.prompts.render_chat(
                list(request.messages or ()),
                request.add_generation_prompt,
                **request.chat_template_kwargs,
            )
        return self.prompts.build(text, _slots(request.media, encoded))


def _has_text(request: GenerationRequest) -> bool:
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids) > 0
    if request.prompt is not None:
        return bool(request.prompt.strip())
    for message in request.messages or ():
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return True
        if isinstance(content, list) and any(
            p.get("type") == "text" and str(p.get("text", "")).strip() for p in content
        ):
            return True
    return False


def _media_item(item: MediaInput, processor_kwargs: Mapping[str, Any]) -> MediaItem:
    metadata = {"grid_thw": tuple(item.grid_thw)} if item.grid_thw is not None else {}
    return MediaItem(
        data=item.data,
        embeddings=item.embeddings,
        decoded=item.decoded,
        options=dict(item.options),
        metadata=metadata,
        # NOTE: precomputed embeddings were never processed: no processor arguments apply
        processor_kwargs={} if item.is_embeddings else dict(processor_kwargs),
    )


def _slots(media: Sequence[MediaInput], encoded: list[Any]) -> list[MediaSlot]:
    """What the prompt builder splices for each item: the encoder's answer."""
    return [
        MediaSlot(
            modality=item.modality,
            # NOTE: cross-attention states take no prompt rows: the item is its one token
            num_tokens=1 if result.metadata.get("cross_attention") else int(result.num_tokens),
            content_hash=result.content_hash,
            grid_thw=_grid(result),
            second_per_grid_t=result.metadata.get("second_per_grid_t"),
            placeholder=result.metadata.get("placeholder"),
            replacement=result.metadata.get("replacement"),
            embed_token_id=result.metadata.get("embed_token_id"),
            token_ids=tuple(getattr(result, "token_ids", ())) or None,
        )
        for item, result in zip(media, encoded, strict=True)
    ]


def _grid(result: Any) -> tuple[int, int, int] | None:
    grid = result.metadata.get("grid_thw")
    return tuple(int(g) for g in grid) if grid is not None else None


def _spans(built: BuiltPrompt, encoded: list[Any]) -> tuple[MultiModalSpan, ...]:
    spans = []
    for r in built.ranges:
        result = encoded[r.item_index]
        if int(result.embeddings.shape[0]) != r.num_embeds:
            raise InvalidRequest(
                f"media item {r.item_index} has {result.embeddings.shape[0]} embedding rows "
                f"but its placeholder expands to {r.num_embeds} tokens"
            )
        spans.append(
            MultiModalSpan(
                offset=r.offset,
                length=r.length,
                content_hash=result.content_hash,
                embeddings=result.embeddings,
                is_embed=r.is_embed,
            )
        )
    return tuple(spans)


class _Clock:
    """Stage timings, and the client's deadline shared by every stage."""

    def __init__(self, timeout: float | None = None) -> None:
        self.start = self.mark = time.perf_counter()
        self.deadline = None if timeout is None else self.start + timeout

    def left(self, stage: str) -> float | None:
        """Seconds left of the deadline for the next stage; TimeoutError when none are."""
        if self.deadline is None:
            return None
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"the deadline expired before {stage}")
        return left

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.mark = (now - self.mark) * 1e3, now
        return elapsed

    def total(self) -> float:
        return (time.perf_counter() - self.start) * 1e3
