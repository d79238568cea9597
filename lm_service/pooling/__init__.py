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

Files: `config.py` (the task, PoolerConfig, PoolingConfig, `--override-pooler-config`),
`defaults.py` (the table above, max_model_len), `pooler.py` (pooling and activation),
`loading.py` (checkpoint -> backbone and head), `inputs.py` (input checks, padding),
`model.py` (PoolingModel).
"""

from __future__ import annotations

from lm_service.pooling.config import (
    POOLER_KEYS,
    PoolerConfig,
    PoolingConfig,
    PoolingType,
    parse_pooler_overrides,
    parse_pooling_task,
)
from lm_service.pooling.defaults import (
    default_max_model_len,
    default_pooler_config,
    is_encoder_only,
    resolve_pooler_config,
    sentence_transformers_pooling,
)
from lm_service.pooling.inputs import PaddedBatch, pad_inputs
from lm_service.pooling.loading import PoolingParts, load_pooling_parts
from lm_service.pooling.model import PoolingModel
from lm_service.pooling.pooler import Pooler

__all__ = [
    "POOLER_KEYS",
    "PaddedBatch",
    "Pooler",
    "PoolerConfig",
    "PoolingConfig",
    "PoolingModel",
    "PoolingParts",
    "PoolingType",
    "default_max_model_len",
    "default_pooler_config",
    "is_encoder_only",
    "load_pooling_parts",
    "pad_inputs",
    "parse_pooler_overrides",
    "parse_pooling_task",
    "resolve_pooler_config",
    "sentence_transformers_pooling",
]
