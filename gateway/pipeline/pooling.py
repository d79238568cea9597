"""Pooling requests: tokenize -> LM Pool -> embeddings, class probabilities or scores.

Pure asyncio; reaches the LM through `LMBackend.pool`, and for prompts with media (the seed's
multimodal embedding rows: LLaVA-NeXT `T / I`, Qwen2-VL `T + I`) the encoders through the
generation Orchestrator, which checks, encodes and splices them exactly as for Generate.

Which requests a gateway answers depends on its `--task`:
- embed: Embed; Score compares the embeddings of text_1 and each text_2 by cosine (as vLLM
  scores with embedding models);
- classify: Classify;
- score: Score, the (text_1, text_2) pairs through a cross-encoder (token type ids for BERT);
- reward: none over gRPC (the offline `LLM.encode` returns the per-token rewards).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from gateway.backends.base import LMBackend
from gateway.pipeline.types import MediaInput, Usage
from protos.errors import InvalidRequest, Unsupported
from protos.lm_messages import PoolingInput
from protos.tasks import POOLING_TASKS


@dataclass(frozen=True, slots=True)
class MediaPrompt:
    """A pooling prompt with media: text with the model's placeholders, its items in order.

    NOTE: the text around the placeholders of a raw prompt is the model's prompt template
    (e5-v's "<image>\nSummary above image in one word:"), not content: for the seed's `T / I`
    an input with an image is an image input. A conversation's text parts are content
    (`has_text`).
    """

    prompt: str
    media: tuple[MediaInput, ...]
    has_text: bool = False
    # vLLM's per-request mm_processor_kwargs, for this prompt's media files
    mm_processor_kwargs: Mapping[str, Any] = field(default_factory=dict)


Prompt = str | Sequence[int] | MediaPrompt  # text, token ids (special tokens included), media


class PooledOutput(NamedTuple):
    prompt_token_ids: tuple[int, ...]
    data: torch.Tensor  # embed [hidden], classify [num_labels], score [1], reward [rows, D]


class PoolingResult(NamedTuple):
    outputs: list[PooledOutput]
    usage: Usage


class Classification(NamedTuple):
    probs: list[float]
    label_index: int
    label: str


class ScoreResult(NamedTuple):
    scores: list[float]
    usage: Usage
    prompt_token_ids: list[tuple[int, ...]]  # each pair's ids (cross-encoder); () for cosine


def not_served(served: Any, task: str) -> Unsupported:
    """The sentence for a request whose task this gateway does not serve."""
    return Unsupported(
        f"this gateway serves {served.model} ({served.architecture}) for the "
        f"{served.task!r} task; {task!r} is not available"
    )


def require_generate(served: Any) -> None:
    """Refuses text generation on a gateway that serves a pooling or transcription task."""
    if served.task in (*POOLING_TASKS, "transcription"):
        raise not_served(served, "generate")


class PoolingOrchestrator:
    """Runs pooling requests for one served model; written once for local and remote LMs.

    Args:
        served: gateway.pipeline.orchestrator.ServedModel (its `task` decides what is answered).
        tokenizer: the model's HF tokenizer.
        id2label: class names of a classifier.
    """

    def __init__(
        self,
        served: Any,
        tokenizer: Any,
        lm: LMBackend,
        id2label: Mapping[int, str] | None = None,
        media: Any = None,
    ) -> None:
        self.served = served
        self.tokenizer = tokenizer
        self.lm = lm
        self.id2label = dict(id2label or {})
        self.media = media  # the Orchestrator that encodes and splices media; None: text only

    @classmethod
    def of(cls, orchestrator: Any) -> PoolingOrchestrator:
        """The pooling side of a gateway Orchestrator (same model, tokenizer and LM)."""
        config = orchestrator.prompts.config
        raw = getattr(config, "id2label", None) or {}
        id2label = {int(k): str(v) for k, v in raw.items()}
        tokenizer = orchestrator.prompts.tokenizer
        return cls(orchestrator.served, tokenizer, orchestrator.lm, id2label, orchestrator)

    # ------------------------------------------------------------------ requests

    async def encode(self, prompts: Sequence[Prompt], timeout: float | None) -> PoolingResult:
        """The served task's raw pooled data per prompt (vLLM's `LLM.encode`)."""
        self._require(*POOLING_TASKS)
        _require_inputs(prompts, "an encode request")
        inputs = await self._inputs(prompts, timeout)
        return await self._pool(self.served.task, inputs, timeout)

    async def embed(
        self, prompts: Sequence[Prompt], normalize: bool | None, timeout: float | None
    ) -> PoolingResult:
        """One embedding per prompt; `normalize=True` L2-normalizes here."""
        self._require("embed")
        _require_inputs(prompts, "an Embed request")
        if normalize is False:
            raise Unsupported(
                "normalize=false cannot undo the LM's pooler; start the LM with "
                "--override-pooler-config '{\"normalize\": false}' and leave normalize unset"
            )
        result = await self._pool("embed", await self._inputs(prompts, timeout), timeout)
        if not normalize:
            return result
        outputs = [o._replace(data=F.normalize(o.data, dim=-1)) for o in result.outputs]
        return PoolingResult(outputs, result.usage)

    async def classify(
        self, prompts: Sequence[Prompt], timeout: float | None
    ) -> tuple[list[Classification], PoolingResult]:
        """Class probabilities, the most likely label's index and name, per prompt."""
        self._require("classify")
        _require_inputs(prompts, "a Classify request")
        result = await self._pool("classify", await self._inputs(prompts, timeout), timeout)
        return [self._classification(o.data) for o in result.outputs], result

    async def score(
        self, text_1: Sequence[str], texts_2: Sequence[str], timeout: float | None
    ) -> ScoreResult:
        """A score per pair: text_1 of length 1 is paired with every text_2, else one to one."""
        self._require("score", "embed")
        pairs = score_pairs(text_1, texts_2)
        if self.served.task == "embed":
            return await self._cosine_scores(pairs, timeout)
        inputs = [self._tokenize(a, b) for a, b in pairs]
        result = await self._pool("score", inputs, timeout)
        scores = [float(o.data.reshape(-1)[0]) for o in result.outputs]
        return ScoreResult(scores, result.usage, [o.prompt_token_ids for o in result.outputs])

    # ------------------------------------------------------------------ helpers

    def _require(self, *tasks: str) -> None:
        if self.served.task not in tasks:
            raise not_served(self.served, tasks[0])

    async def _inputs(self, prompts: Sequence[Prompt], timeout: float | None) -> list[PoolingInput]:
        """Each prompt's PoolingInput; media prompts are checked first, then encoded together."""
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, MediaPrompt):
                self._check_media(index, prompt)
        jobs = [self._media_input(p, timeout) for p in prompts if isinstance(p, MediaPrompt)]
        with_media = iter(await asyncio.gather(*jobs))
        return [
            next(with_media) if isinstance(p, MediaPrompt) else self._tokenize(p) for p in prompts
        ]

    def _check_media(self, index: int, prompt: MediaPrompt) -> None:
        if self.media is None:
            raise Unsupported(f"input {index} carries media; this gateway has no encoders")
        try:
            self.media.check_media(prompt.media, has_text=prompt.has_text or not prompt.media)
        except InvalidRequest as error:
            raise InvalidRequest(f"input {index}: {error}") from error

    async def _media_input(self, prompt: MediaPrompt, timeout: float | None) -> PoolingInput:
        built, spans = await self.media.media_prompt(
            prompt.prompt, prompt.media, timeout, prompt.mm_processor_kwargs
        )
        return PoolingInput(
            tuple(built.token_ids), None, spans, mrope_positions=built.mrope_positions
        )

    def _tokenize(self, prompt: Prompt, pair: str | None = None) -> PoolingInput:
        if not isinstance(prompt, str):
            return PoolingInput(tuple(int(t) for t in prompt))
        encoded = self.tokenizer(prompt, pair) if pair is not None else self.tokenizer(prompt)
        types = encoded.get("token_type_ids")
        return PoolingInput(tuple(encoded["input_ids"]), tuple(types) if types else None)

    async def _pool(
        self, task: str, inputs: list[PoolingInput], timeout: float | None
    ) -> PoolingResult:
        outputs = await self.lm.pool(task, inputs, timeout)
        pooled = [PooledOutput(i.token_ids, o) for i, o in zip(inputs, outputs, strict=True)]
        return PoolingResult(pooled, Usage(sum(len(i.token_ids) for i in inputs), 0, 0))

    async def _cosine_scores(
        self, pairs: list[tuple[str, str]], timeout: float | None
    ) -> ScoreResult:
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))  # each distinct text once
        result = await self._pool("embed", [self._tokenize(t) for t in texts], timeout)
        vectors = {t: o.data for t, o in zip(texts, result.outputs, strict=True)}
        scores = [float(F.cosine_similarity(vectors[a], vectors[b], dim=0)) for a, b in pairs]
        return ScoreResult(scores, result.usage, [()] * len(pairs))

    def _classification(self, probs: torch.Tensor) -> Classification:
        index = int(probs.argmax())
        return Classification(probs.tolist(), index, self.id2label.get(index, f"LABEL_{index}"))


def score_pairs(text_1: Sequence[str], texts_2: Sequence[str]) -> list[tuple[str, str]]:
    """vLLM's pairing: 1 x N broadcasts text_1, N x N pairs one to one."""
    if not text_1 or not texts_2:
        raise InvalidRequest("a Score request needs a text_1 and at least one text_2")
    if len(text_1) == 1:
        return [(text_1[0], t) for t in texts_2]
    if len(text_1) != len(texts_2):
        raise InvalidRequest(
            f"text_1 has {len(text_1)} texts and text_2 {len(texts_2)}; give one text_1, or "
            "as many as text_2"
        )
    return list(zip(text_1, texts_2, strict=True))


def _require_inputs(prompts: Sequence[Prompt], what: str) -> None:
    if not prompts:
        raise InvalidRequest(f"{what} needs at least one input")
