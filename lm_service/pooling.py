"""Pooling tasks: embed, classify, score (cross-encoder) and reward, over token ids.

A pooling model is a Hugging Face model run dense: encoder-only models (BERT, RoBERTa) keep no
KV cache, so there is nothing to page. Inputs are sorted by length and cut into padded batches
of at most `max_num_batched_tokens` (padded) tokens, each one forward with an attention mask;
concurrent callers share batches through a micro-batcher.

Per input: backbone -> hidden states [T, H] -> `Pooler` (MEAN / CLS / LAST / ALL / STEP) ->
head (classifier, LM head or none) -> activation. Defaults follow vLLM:

| task     | pooling                                      | normalize | softmax |
|----------|----------------------------------------------|-----------|---------|
| embed    | sentence-transformers' 1_Pooling, else CLS    | modules.json has Normalize, else yes | no |
|          | for encoders and LAST for decoders           |           |         |
| classify | the head's own: CLS (BERT, RoBERTa), LAST (decoders) | no | yes   |
| score    | as classify                                  | no        | yes (the score activation) |
| reward   | ALL (one row per token)                      | no        | no      |

`override_pooler_config` (vLLM's `--override-pooler-config '{"pooling_type": "MEAN",
"normalize": false}'`) takes priority over both.

Outputs (float32):
- embed -> [hidden]; classify -> [num_labels] (probabilities when softmax, else logits);
- score -> [1]: sigmoid(logit) for one label (ms-marco cross-encoders); for several labels the
  softmax probability of the LAST label (the positive class of binary rerankers). With
  `softmax: false` the raw last logit.
- reward -> ALL: [num_tokens, D] where D is num_labels for checkpoints with a reward or
  classification head, else hidden (the seed: "returns each token's hidden state"); LAST /
  MEAN / CLS: [D]; STEP: [num_step_tags, len(returned_token_ids)] from the LM head's logits at
  the positions of `step_tag_id` (process reward models such as math-shepherd).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lm_service.models.loader import load_config, resolve_model_path
from protos.dtypes import config_dtype, resolve_dtype
from protos.errors import InvalidRequest, Unsupported

logger = logging.getLogger(__name__)

Head = Callable[[torch.Tensor], torch.Tensor]  # [..., hidden] -> [..., D]


class PoolingTask(enum.Enum):
    EMBED = "embed"
    CLASSIFY = "classify"
    SCORE = "score"
    REWARD = "reward"

    @classmethod
    def parse(cls, value: str | PoolingTask) -> PoolingTask:
        if isinstance(value, PoolingTask):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise InvalidRequest(
                f"unknown pooling task {value!r}; expected one of {names}"
            ) from None


POOLING_TASKS: tuple[str, ...] = tuple(t.value for t in PoolingTask)


class PoolingType(enum.Enum):
    LAST = "LAST"
    ALL = "ALL"
    CLS = "CLS"
    MEAN = "MEAN"
    STEP = "STEP"


@dataclass(frozen=True, slots=True)
class PoolingInput:
    """One input of a Pool call.

    Args:
        token_ids: the prompt, special tokens included.
        token_type_ids: BERT-style segment ids of a (text_1, text_2) pair; same length, or None.
    """

    token_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class PoolerConfig:
    """How hidden states become one output per input (vLLM's PoolerConfig).

    Args:
        pooling_type: MEAN (masked mean), CLS (first token), LAST (last real token), ALL (every
            token), STEP (the rows at `step_tag_id`).
        normalize: L2-normalize the output.
        softmax: softmax over the output's last dim (classify); for score, apply the score
            activation (see the module docstring).
        step_tag_id: STEP only: the token id that marks the end of a step.
        returned_token_ids: STEP only: the LM-head columns to keep, e.g. the "+" and "-" ids.
    """

    pooling_type: PoolingType
    normalize: bool = False
    softmax: bool = False
    step_tag_id: int | None = None
    returned_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.pooling_type is PoolingType.STEP and self.step_tag_id is None:
            raise InvalidRequest('pooling_type STEP needs "step_tag_id" (the step tag token id)')


POOLER_KEYS = ("pooling_type", "normalize", "softmax", "step_tag_id", "returned_token_ids")


def parse_pooler_overrides(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """`--override-pooler-config` (JSON text or a mapping) -> validated PoolerConfig fields.

    Idempotent: parsing an already parsed mapping gives it back.
    """
    if value is None or value == "":
        return {}
    raw = _json_mapping(value) if isinstance(value, str) else dict(value)
    unknown = sorted(set(raw) - set(POOLER_KEYS))
    if unknown:
        raise InvalidRequest(
            f"override_pooler_config: unknown key(s) {unknown}; known: {', '.join(POOLER_KEYS)}"
        )
    return {key: _pooler_value(key, v) for key, v in raw.items()}


def _json_mapping(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"override_pooler_config is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("override_pooler_config must be a JSON object")
    return parsed


def _pooler_value(key: str, value: Any) -> Any:
    if key == "pooling_type":
        if isinstance(value, PoolingType):
            return value
        try:
            return PoolingType(str(value).upper())
        except ValueError:
            names = ", ".join(t.value for t in PoolingType)
            raise InvalidRequest(f"pooling_type must be one of {names}, got {value!r}") from None
    if key in ("normalize", "softmax") and isinstance(value, bool):
        return value
    if key == "step_tag_id" and _is_int(value):
        return value
    if key == "returned_token_ids" and isinstance(value, list | tuple) and all(map(_is_int, value)):
        return tuple(value)
    kinds = {"normalize": "true or false", "softmax": "true or false"}
    kind = kinds.get(key, "an integer" if key == "step_tag_id" else "a list of integers")
    raise InvalidRequest(f"override_pooler_config: {key} must be {kind}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- defaults


def sentence_transformers_pooling(model_path: Path) -> dict[str, Any] | None:
    """The pooler that a sentence-transformers checkpoint declares (modules.json), or None.

    Its Pooling module's config gives the pooling type; a Normalize module means normalize.
    """
    modules_file = model_path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    types = [str(m.get("type", "")) for m in modules]
    pooling = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    if pooling is None:
        return None
    config_file = model_path / pooling.get("path", "") / "config.json"
    if not config_file.is_file():
        return None
    pooling_type = _st_pooling_type(json.loads(config_file.read_text()))
    if pooling_type is None:
        return None
    return {"pooling_type": pooling_type, "normalize": any(t.endswith(".Normalize") for t in types)}


def _st_pooling_type(config: Mapping[str, Any]) -> PoolingType | None:
    if config.get("pooling_mode_mean_tokens"):
        return PoolingType.MEAN
    if config.get("pooling_mode_cls_token"):
        return PoolingType.CLS
    if config.get("pooling_mode_lasttoken"):
        return PoolingType.LAST
    return None  # max / weighted mean: not supported, fall back to the model's default


def is_encoder_only(hf_config: Any) -> bool:
    """BERT-like (bidirectional, masked-LM family) models pool CLS by default; decoders LAST."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(hf_config, "model_type", "")
    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        hf_config, "is_decoder", False
    )


def default_pooler_config(
    task: PoolingTask, head_pooling: PoolingType, st_pooling: Mapping[str, Any] | None
) -> PoolerConfig:
    """vLLM's per-task default; for embed, a sentence-transformers config wins."""
    if task is PoolingTask.EMBED:
        if st_pooling is not None:
            return PoolerConfig(st_pooling["pooling_type"], normalize=st_pooling["normalize"])
        return PoolerConfig(head_pooling, normalize=True)
    if task is PoolingTask.REWARD:
        return PoolerConfig(PoolingType.ALL)
    return PoolerConfig(head_pooling, softmax=True)


def resolve_pooler_config(
    task: PoolingTask,
    head_pooling: PoolingType,
    st_pooling: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
) -> PoolerConfig:
    """The default for `task`, with `overrides` on top; refuses combinations that cannot work."""
    config = dataclasses.replace(default_pooler_config(task, head_pooling, st_pooling), **overrides)
    per_token = config.pooling_type in (PoolingType.ALL, PoolingType.STEP)
    if per_token and task is not PoolingTask.REWARD:
        raise InvalidRequest(
            f"pooling_type {config.pooling_type.value} gives several rows per input; "
            f"use it with the reward task, not {task.value!r}"
        )
    return config


# ----------------------------------------------------------------------------- pooler


class Pooler:
    """Picks or averages hidden states per input.

    Args (of `pool`):
        hidden: [B, T, H] last hidden states of a right-padded batch.
        mask: [B, T] 1 for real tokens.
        input_ids: [B, T] (STEP looks for `step_tag_id`).
    Returns one tensor per input: [H] (MEAN, CLS, LAST) or [rows, H] (ALL, STEP).
    """

    def __init__(self, config: PoolerConfig) -> None:
        self.config = config

    def pool(
        self, hidden: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor
    ) -> list[torch.Tensor]:
        kind = self.config.pooling_type
        lengths = mask.sum(dim=1)  # [B]
        if kind is PoolingType.MEAN:
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            summed = (hidden * weights).sum(dim=1)  # [B, H]
            return list((summed / weights.sum(dim=1).clamp(min=1e-9)).unbind(0))
        if kind is PoolingType.CLS:
            return list(hidden[:, 0].unbind(0))
        if kind is PoolingType.LAST:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return list(hidden[rows, lengths - 1].unbind(0))
        if kind is PoolingType.ALL:
            return [hidden[i, : int(n)] for i, n in enumerate(lengths)]
        steps = (input_ids == self.config.step_tag_id) & mask.bool()  # [B, T]
        return [hidden[i][steps[i]] for i in range(hidden.shape[0])]


# ----------------------------------------------------------------------------- loading


class PoolingParts(NamedTuple):
    """A loaded checkpoint split into what the runner calls."""

    model: nn.Module  # the whole HF model (apply_model sees it)
    backbone: nn.Module  # input ids -> last_hidden_state [B, T, H]
    head: Head  # pooled [..., H] -> [..., D]
    head_pooling: PoolingType  # the pooling the head was trained with
    hf_config: Any
    architecture: str
    model_path: Path


@dataclass(frozen=True, slots=True)
class PoolingConfig:
    """How to load and run a pooling model.

    Args:
        task: a PoolingTask or its name ("embed", ...).
        override_pooler_config: fields of PoolerConfig that replace the model's defaults, as
            a mapping or JSON text (`pooling_type` by name); parsed on construction.
        max_num_batched_tokens: padded tokens per forward (batch size x longest input).
        max_model_len: longest input; None: the model's positions (or sentence-transformers'
            max_seq_length, whichever is smaller).
    """

    model: str
    task: PoolingTask
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    hf_overrides: Mapping[str, Any] = field(default_factory=dict)
    revision: str | None = None
    override_pooler_config: Mapping[str, Any] | str = field(default_factory=dict)
    max_model_len: int | None = None
    max_num_batched_tokens: int = 2048
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", PoolingTask.parse(self.task))
        overrides = parse_pooler_overrides(self.override_pooler_config)
        object.__setattr__(self, "override_pooler_config", overrides)
        if self.max_num_batched_tokens <= 0 or self.max_batch_size <= 0:
            raise InvalidRequest("max_num_batched_tokens and max_batch_size must be > 0")

    @classmethod
    def from_engine_config(
        cls,
        config: Any,
        task: str | PoolingTask,
        override_pooler_config: str | Mapping[str, Any] | None = None,
    ) -> PoolingConfig:
        """The pooling config of an EngineConfig (its KV-cache fields do not apply)."""
        return cls(
            model=config.model,
            task=PoolingTask.parse(task),
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            hf_overrides=dict(config.hf_overrides),
            revision=config.revision,
            override_pooler_config=parse_pooler_overrides(override_pooler_config),
            max_model_len=config.max_model_len,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_batch_size=config.max_num_seqs,
        )


_HEADED_SUFFIXES = ("ForSequenceClassification", "ForRewardModel")


def load_pooling_parts(config: PoolingConfig) -> PoolingParts:
    """Loads the HF class the task needs and finds its backbone and head."""
    model_path = resolve_model_path(config.model, revision=config.revision)
    hf_config = load_config(
        model_path,
        trust_remote_code=config.trust_remote_code,
        hf_overrides=dict(config.hf_overrides) or None,
        revision=config.revision,
    )
    architecture = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    kind = _model_kind(config, architecture)
    model = _load_hf_model(kind, model_path, hf_config, config)
    backbone, head, head_pooling = _split(kind, model, hf_config, architecture)
    return PoolingParts(model, backbone, head, head_pooling, hf_config, architecture, model_path)


def _model_kind(config: PoolingConfig, architecture: str) -> str:
    """ "base" (hidden states), "classifier" (sequence head) or "causal" (LM head, STEP)."""
    task, headed = config.task, architecture.endswith(_HEADED_SUFFIXES)
    if task in (PoolingTask.CLASSIFY, PoolingTask.SCORE):
        if not headed:
            raise Unsupported(_no_head_sentence(architecture, task))
        return "classifier"
    if task is PoolingTask.REWARD:
        step = config.override_pooler_config.get("pooling_type") is PoolingType.STEP
        return "causal" if step else ("classifier" if headed else "base")
    return "base"


def _no_head_sentence(architecture: str, task: PoolingTask) -> str:
    if task is PoolingTask.SCORE:
        return (
            f"{architecture} has no classification head, so it cannot score pairs as a "
            "cross-encoder; serve it with --task embed (Score then compares embeddings by cosine)"
        )
    return (
        f"{architecture} has no classification head; --task classify needs a "
        "*ForSequenceClassification checkpoint"
    )


def _load_hf_model(kind: str, model_path: Path, hf_config: Any, config: PoolingConfig) -> Any:
    import transformers

    auto = {
        "base": transformers.AutoModel,
        "classifier": transformers.AutoModelForSequenceClassification,
        "causal": transformers.AutoModelForCausalLM,
    }[kind]
    dtype = resolve_dtype(config.dtype, config_dtype(hf_config))
    model = auto.from_pretrained(
        str(model_path),
        config=hf_config,
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        revision=config.revision,
    )
    return model.to(config.device).eval()


def _split(
    kind: str, model: Any, hf_config: Any, architecture: str
) -> tuple[nn.Module, Head, PoolingType]:
    """(backbone, head, the head's pooling) of a loaded model."""
    encoder = is_encoder_only(hf_config)
    own_pooling = PoolingType.CLS if encoder else PoolingType.LAST
    if kind == "base":
        return model, _identity, own_pooling
    backbone = getattr(model, model.base_model_prefix)
    if kind == "causal":
        return backbone, model.get_output_embeddings(), PoolingType.STEP
    return (backbone, *_classifier_head(model, backbone, architecture))


def _check_step_ids(pooler: PoolerConfig, vocab_size: int) -> None:
    """STEP pooling's token ids must exist, or every request would fail later."""
    if pooler.pooling_type is not PoolingType.STEP:
        return
    ids = [pooler.step_tag_id, *pooler.returned_token_ids]
    bad = [i for i in ids if i is None or not 0 <= i < vocab_size]
    if bad:
        raise InvalidRequest(
            f"override_pooler_config: token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
        )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _classifier_head(model: Any, backbone: Any, architecture: str) -> tuple[Head, PoolingType]:
    """The sequence-classification head as a function of pooled hidden states.

    Decoders (`score`, as in transformers' GenericForSequenceClassification) pool LAST; BERT's
    head is its pooler's dense + tanh then `classifier`, on CLS; RoBERTa's head reads
    `features[:, 0]`, so pooled rows are given a length-1 token axis.
    """
    score = getattr(model, "score", None)
    if isinstance(score, nn.Linear):
        return score, PoolingType.LAST
    classifier = getattr(model, "classifier", None)
    pooler = getattr(backbone, "pooler", None)
    if isinstance(classifier, nn.Linear) and hasattr(pooler, "dense"):
        return (lambda x: classifier(pooler.activation(pooler.dense(x)))), PoolingType.CLS
    if classifier is not None and hasattr(classifier, "out_proj"):
        return (lambda x: classifier(x.unsqueeze(-2))), PoolingType.CLS
    if isinstance(classifier, nn.Linear):
        return classifier, PoolingType.CLS
    raise Unsupported(f"{architecture}: meshserve does not know where its classification head is")


def default_max_model_len(hf_config: Any, model_path: Path) -> int:
    """The model's positions, capped by sentence-transformers' max_seq_length if it has one."""
    text_config = hf_config.get_text_config()
    limit = int(getattr(text_config, "max_position_embeddings", 0) or 512)
    st_file = model_path / "sentence_bert_config.json"
    if st_file.is_file():
        limit = min(limit, int(json.loads(st_file.read_text()).get("max_seq_length", limit)))
    return limit


# ----------------------------------------------------------------------------- runner


class PaddedBatch(NamedTuple):
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    token_type_ids: torch.Tensor  # [B, T] zeros where not given


class PoolingModel:
    """Runs one pooling task over token ids; thread-safe (one worker owns the model).

    Args:
        parts: the loaded model (see `load_pooling_parts`).
        config: the task, batching limits and pooler overrides.
    """

    def __init__(self, parts: PoolingParts, config: PoolingConfig) -> None:
        self.parts = parts
        self.config = config
        self.task = config.task
        st_pooling = sentence_transformers_pooling(parts.model_path)
        self.pooler_config = resolve_pooler_config(
            config.task, parts.head_pooling, st_pooling, config.override_pooler_config
        )
        self.pooler = Pooler(self.pooler_config)
        self.max_model_len = config.max_model_len or default_max_model_len(
            parts.hf_config, parts.model_path
        )
        text_config = parts.hf_config.get_text_config()
        self.vocab_size = int(getattr(text_config, "vocab_size", 0))
        self.hidden_size = int(getattr(text_config, "hidden_size", 0))
        self.type_vocab_size = int(getattr(text_config, "type_vocab_size", 0) or 0)
        self.pad_token_id = int(getattr(text_config, "pad_token_id", None) or 0)
        self.takes_token_types = _takes_token_types(parts.backbone)
        self.device = next(parts.model.parameters()).device
        self._batcher: Any = None
        _check_step_ids(self.pooler_config, self.vocab_size)

    @classmethod
    def from_config(cls, config: PoolingConfig) -> PoolingModel:
        model = cls(load_pooling_parts(config), config)
        logger.info(
            "pooling model %s (%s) task=%s pooler=%s",
            config.model,
            model.architecture,
            config.task.value,
            model.pooler_config,
        )
        return model

    @property
    def architecture(self) -> str:
        return self.parts.architecture

    @property
    def model(self) -> nn.Module:
        return self.parts.model

    @property
    def id2label(self) -> dict[int, str]:
        raw = getattr(self.parts.hf_config, "id2label", None) or {}
        return {int(k): str(v) for k, v in raw.items()}

    # ------------------------------------------------------------------ public API

    def pool(self, task: str | PoolingTask, inputs: Sequence[PoolingInput]) -> list[torch.Tensor]:
        """One float32 output per input, in order (shapes: see the module docstring).

        Raises:
            Unsupported: `task` is not the one this model serves.
            InvalidRequest: no inputs, an empty input, an input longer than max_model_len,
                token ids outside the vocabulary.
        """
        self.check_task(PoolingTask.parse(task))
        self.validate(inputs)
        return self._micro_batcher().submit(list(inputs))

    def check_task(self, task: PoolingTask) -> None:
        if task is not self.task:
            raise Unsupported(
                f"this LM serves {self.config.model} ({self.architecture}) for the "
                f"{self.task.value!r} task; {task.value!r} needs an LM started with "
                f"--task {task.value}"
            )

    def validate(self, inputs: Sequence[PoolingInput]) -> None:
        if not inputs:
            raise InvalidRequest("a pooling request needs at least one input")
        for index, item in enumerate(inputs):
            _validate_input(index, item, self.max_model_len, self.vocab_size, self.type_vocab_size)

    def run(self, inputs: Sequence[PoolingInput]) -> list[torch.Tensor]:
        """Runs validated inputs now, in this thread: length-sorted padded batches."""
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].token_ids))
        results: list[torch.Tensor | None] = [None] * len(inputs)
        start = 0
        for chunk in self._chunks([inputs[i] for i in order]):
            indices = order[start : start + len(chunk)]
            for index, output in zip(indices, self._forward(chunk), strict=True):
                results[index] = output
            start += len(chunk)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

    # ------------------------------------------------------------------ internals

    def _micro_batcher(self) -> Any:
        if self._batcher is None:
            from protos.micro_batcher import MicroBatcher

            self._batcher = MicroBatcher(
                self.run, max_batch_size=self.config.max_batch_size, name="pooling-batcher"
            )
        return self._batcher

    def _chunks(self, ordered: list[PoolingInput]) -> list[list[PoolingInput]]:
        """Length-sorted inputs cut so that count x longest <= max_num_batched_tokens."""
        chunks: list[list[PoolingInput]] = []
        current: list[PoolingInput] = []
        for item in ordered:
            padded = (len(current) + 1) * len(item.token_ids)
            if current and padded > self.config.max_num_batched_tokens:
                chunks.append(current)
                current = []
            current.append(item)
        return [*chunks, current] if current else chunks

    @torch.inference_mode()
    def _forward(self, inputs: list[PoolingInput]) -> list[torch.Tensor]:
        batch = pad_inputs(inputs, self.pad_token_id, self.device)
        kwargs = {"token_type_ids": batch.token_type_ids} if self.takes_token_types else {}
        out = self.parts.backbone(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs
        )
        hidden = out.last_hidden_state  # [B, T, H]
        pooled = self.pooler.pool(hidden, batch.attention_mask, batch.input_ids)
        return [self._activate(y).float().cpu() for y in self._apply_head(pooled)]

    def _apply_head(self, pooled: list[torch.Tensor]) -> list[torch.Tensor]:
        if all(p.dim() == 1 for p in pooled):
            return list(self.parts.head(torch.stack(pooled)).unbind(0))  # [B, D] -> B x [D]
        return [self.parts.head(p) for p in pooled]  # rows x [D] each

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        config = self.pooler_config
        if config.pooling_type is PoolingType.STEP and config.returned_token_ids:
            x = x[..., list(config.returned_token_ids)]
        x = x.float()
        if self.task is PoolingTask.SCORE:
            return _score(x, config.softmax)
        if config.normalize:
            x = F.normalize(x, p=2, dim=-1)
        if config.softmax:
            x = x.softmax(dim=-1)
        return x


def _score(logits: torch.Tensor, activate: bool) -> torch.Tensor:
    """[num_labels] -> [1]: sigmoid of one logit, else P(last label); raw when not activated."""
    if not activate:
        return logits[-1:]
    if logits.shape[-1] == 1:
        return logits.sigmoid()
    return logits.softmax(dim=-1)[-1:]


def _takes_token_types(backbone: nn.Module) -> bool:
    import inspect

    return "token_type_ids" in inspect.signature(backbone.forward).parameters


def _validate_input(
    index: int, item: PoolingInput, max_len: int, vocab_size: int, type_vocab_size: int
) -> None:
    n = len(item.token_ids)
    if n == 0:
        raise InvalidRequest(f"input {index} has no tokens")
    if n > max_len:
        raise InvalidRequest(f"input {index} has {n} tokens; this model takes at most {max_len}")
    if vocab_size and max(item.token_ids) >= vocab_size:
        raise InvalidRequest(
            f"input {index} holds token id {max(item.token_ids)}; the vocabulary has {vocab_size}"
        )
    types = item.token_type_ids
    if types is None:
        return
    if len(types) != n:
        raise InvalidRequest(f"input {index} has {n} token ids but {len(types)} token type ids")
    if type_vocab_size and types and max(types) >= type_vocab_size:
        raise InvalidRequest(
            f"input {index} holds token type {max(types)}; the model has {type_vocab_size}"
        )


def pad_inputs(
    inputs: Sequence[PoolingInput], pad_token_id: int, device: torch.device | str = "cpu"
) -> PaddedBatch:
    """Right-pads token ids (and token type ids) into [B, T] tensors with an attention mask."""
    longest = max(len(item.token_ids) for item in inputs)
    shape = (len(inputs), longest)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    types = torch.zeros(shape, dtype=torch.long)
    for row, item in enumerate(inputs):
        n = len(item.token_ids)
        input_ids[row, :n] = torch.tensor(item.token_ids)
        mask[row, :n] = 1
        if item.token_type_ids:
            types[row, :n] = torch.tensor(item.token_type_ids)
    return PaddedBatch(input_ids.to(device), mask.to(device), types.to(device))
