"""The demo's untrained checkpoints: small Qwen2-VL and Qwen2-Audio models of the real HF
architectures, with a tokenizer trained on the demo's questions and answers.

Unlike the tests' tiny models (`gateway.tools.tiny_models`), these keep HF's default init and
their special tokens, because they are trained next (`gateway.tools.demo.training`). A chat
turn ends with `<|im_end|>`, which is the tokenizer's EOS and the first of the generation
config's EOS ids, as in the real Qwen chat checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gateway.tools.demo.synthetic import corpus
from gateway.tools.tiny_models.audio import (
    QWEN2_AUDIO_SPECIALS,
    qwen2_audio_encoder_config,
    whisper_feature_extractor,
)
from gateway.tools.tiny_models.chat_template import (
    QWEN2_AUDIO_PART,
    QWEN2_VL_IMAGE_PART,
    QWEN2_VL_VIDEO_PART,
    build_chat_template,
)
from gateway.tools.tiny_models.text import QWEN_ROPE, llama_like
from gateway.tools.tiny_models.tokenizer import (
    EOS_ID,
    IM_END_ID,
    PAD_ID,
    TokenizerSpec,
    build_bpe_tokenizer,
)
from gateway.tools.tiny_models.vision import (
    QWEN2_VL_MAX_PIXELS,
    QWEN2_VL_MIN_PIXELS,
    QWEN2_VL_SPECIALS,
    qwen2_vl_video_preprocessor_config,
    qwen2_vl_vision_config,
)
from gateway.tools.tiny_models.weights import generation_config, model_seed, save_checkpoint

HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
VISION_SIZE = 64
VISION_DEPTH = 2


def _tokenizer(extra_specials: tuple[str, ...], template: str) -> Any:
    spec = TokenizerSpec(
        extra_specials=extra_specials,
        add_bos=False,
        eos_token="<|im_end|>",
        model_max_length=1024,
        extra_corpus=corpus(),
    )
    return build_bpe_tokenizer(spec, template)


def _text_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    return llama_like(
        vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=2 * HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        eos_token_id=IM_END_ID,
        **overrides,
    )


def _finish(model: Any) -> None:
    model.generation_config = generation_config(IM_END_ID, [IM_END_ID, EOS_ID], PAD_ID)


def build_qwen2_vl(out: Path) -> Any:
    """Saves the untrained Qwen2-VL checkpoint into `out`; returns the model."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    template = build_chat_template(bos=False, image=QWEN2_VL_IMAGE_PART, video=QWEN2_VL_VIDEO_PART)
    tokenizer = _tokenizer(QWEN2_VL_SPECIALS, template)
    head_dim = HIDDEN_SIZE // NUM_HEADS
    rope = dict(QWEN_ROPE, mrope_section=[head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16])
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=_text_config(
            len(tokenizer), max_position_embeddings=1024, rope_parameters=rope
        ),
        vision_config=qwen2_vl_vision_config(VISION_DEPTH, VISION_SIZE, HIDDEN_SIZE),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vocab_size=len(tokenizer),
        eos_token_id=IM_END_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(model_seed("demo_qwen2_vl"))
    model = Qwen2VLForConditionalGeneration(config)
    _finish(model)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN2_VL_MIN_PIXELS, "longest_edge": QWEN2_VL_MAX_PIXELS},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    save_checkpoint(out, model, tokenizer, image_processor)
    video_config = json.dumps(qwen2_vl_video_preprocessor_config(), indent=2, sort_keys=True)
    (out / "video_preprocessor_config.json").write_text(video_config + "\n")
    return model


def build_qwen2_audio(out: Path) -> Any:
    """Saves the untrained Qwen2-Audio checkpoint into `out`; returns the model."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

    template = build_chat_template(bos=False, audio=QWEN2_AUDIO_PART)
    tokenizer = _tokenizer(QWEN2_AUDIO_SPECIALS, template)
    config = Qwen2AudioConfig(
        audio_config=qwen2_audio_encoder_config(),
        text_config=dict(
            model_type="qwen2", **_text_config(len(tokenizer), rope_parameters=dict(QWEN_ROPE))
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        vocab_size=len(tokenizer),
        eos_token_id=IM_END_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(model_seed("demo_qwen2_audio"))
    model = Qwen2AudioForConditionalGeneration(config)
    _finish(model)
    processor = Qwen2AudioProcessor(
        feature_extractor=whisper_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=template,
        audio_token="<|AUDIO|>",
        audio_bos_token="<|audio_bos|>",
        audio_eos_token="<|audio_eos|>",
    )
    save_checkpoint(out, model, processor)
    return model
