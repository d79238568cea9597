"""Tiny random-weight Hugging Face models, built offline and cached on disk (tests, demo, bench).

Every model is a real HF checkpoint folder (config, safetensors weights, generation config,
tokenizer, chat template, processor where the family has one) that the `Auto*` classes load.
Weights are seeded per tensor, so two builds are byte-identical. Sizes are tiny (hidden 64,
2 layers, 4 heads, 2 KV heads) and weights are rescaled so greedy decoding has clear winners.

Usage:
    tiny_model_path("llama")        # build on first use, then cached
    python -m gateway.tools.tiny_models [--out DIR] [names...]

Cache: `$MESHSERVE_TEST_CACHE/<BUILDER_VERSION>/<name>` if the variable is set, else
`~/.cache/meshserve-tests/<BUILDER_VERSION>/<name>`. Bump BUILDER_VERSION whenever a builder
changes. Builds go to a temp folder next to the target and are renamed into place under a file
lock, so concurrent processes never see half a model.

One module per concept: `tokenizer` (BPE / WordPiece training), `chat_template`, `weights`
(seeded init, silenced specials, saving), one per family (`text`, `breadth` for state-space
and hybrid LMs, `more_text` for further fallback rows, `attention_variants` for ALiBi, Falcon
and MLA LMs, `vision`, `vision_llava_next`, `vision_tiles`, `audio`, `pooling`) and `build`
(the registry, the cache and the command line).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gateway.tools.tiny_models.attention_variants import (  # noqa: E402
    ALIBI_MODELS,
    ATTENTION_VARIANT_ARCHITECTURES,
    ATTENTION_VARIANT_MODELS,
    MLA_DIMS,
    MLA_MODELS,
)
from gateway.tools.tiny_models.audio import (  # noqa: E402
    AUDIO_CHUNK_SECONDS,
    AUDIO_HOP_LENGTH,
    AUDIO_MEL_BINS,
    AUDIO_SOURCE_POSITIONS,
    QWEN2_AUDIO_SPECIALS,
    SAMPLING_RATE,
    WHISPER_LANGUAGES,
    WHISPER_SPECIALS,
)
from gateway.tools.tiny_models.breadth import (  # noqa: E402
    BREADTH_MODELS,
    HYBRID_MODELS,
    SSM_MODELS,
)
from gateway.tools.tiny_models.build import (  # noqa: E402
    ALL_MODELS,
    BUILDER_VERSION,
    BUILDERS,
    GENERIC_MULTIMODAL_MODELS,
    MULTIMODAL_MODELS,
    OTHER_MODELS,
    build_all,
    build_model,
    cache_root,
    main,
    minilm_path,
    tiny_model_path,
)
from gateway.tools.tiny_models.chat_template import build_chat_template  # noqa: E402
from gateway.tools.tiny_models.more_text import (  # noqa: E402
    MORE_TEXT_ARCHITECTURES,
    MORE_TEXT_MODELS,
)
from gateway.tools.tiny_models.text import LLAMA_FAMILY, TEXT_MODELS  # noqa: E402
from gateway.tools.tiny_models.tokenizer import (  # noqa: E402
    BASE_SPECIALS,
    BOS_ID,
    EOS_ID,
    IM_END_ID,
    IM_START_ID,
    PAD_ID,
    UNK_ID,
    TokenizerSpec,
    build_bpe_tokenizer,
    build_wordpiece_tokenizer,
)
from gateway.tools.tiny_models.vision import (  # noqa: E402
    CLIP_IMAGE_SIZE,
    CLIP_PATCH_SIZE,
    LLAVA_IMAGE_TOKENS,
    QWEN2_5_VL_VISION,
    QWEN2_VL_MAX_PIXELS,
    QWEN2_VL_MIN_PIXELS,
)
from gateway.tools.tiny_models.weights import rescale_init, silence_special_tokens  # noqa: E402

__all__ = [
    "ALIBI_MODELS",
    "ALL_MODELS",
    "ATTENTION_VARIANT_ARCHITECTURES",
    "ATTENTION_VARIANT_MODELS",
    "AUDIO_CHUNK_SECONDS",
    "AUDIO_HOP_LENGTH",
    "AUDIO_MEL_BINS",
    "AUDIO_SOURCE_POSITIONS",
    "BASE_SPECIALS",
    "BOS_ID",
    "BREADTH_MODELS",
    "BUILDERS",
    "BUILDER_VERSION",
    "CLIP_IMAGE_SIZE",
    "CLIP_PATCH_SIZE",
    "EOS_ID",
    "GENERIC_MULTIMODAL_MODELS",
    "HYBRID_MODELS",
    "IM_END_ID",
    "IM_START_ID",
    "LLAMA_FAMILY",
    "LLAVA_IMAGE_TOKENS",
    "MLA_DIMS",
    "MLA_MODELS",
    "MORE_TEXT_ARCHITECTURES",
    "MORE_TEXT_MODELS",
    "MULTIMODAL_MODELS",
    "OTHER_MODELS",
    "PAD_ID",
    "QWEN2_5_VL_VISION",
    "QWEN2_AUDIO_SPECIALS",
    "QWEN2_VL_MAX_PIXELS",
    "QWEN2_VL_MIN_PIXELS",
    "SAMPLING_RATE",
    "SSM_MODELS",
    "TEXT_MODELS",
    "UNK_ID",
    "WHISPER_LANGUAGES",
    "WHISPER_SPECIALS",
    "TokenizerSpec",
    "build_all",
    "build_bpe_tokenizer",
    "build_chat_template",
    "build_model",
    "build_wordpiece_tokenizer",
    "cache_root",
    "main",
    "minilm_path",
    "rescale_init",
    "silence_special_tokens",
    "tiny_model_path",
]
