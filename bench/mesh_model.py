"""The bench models: Qwen2-0.5B-shaped random weights with a real (tiny) tokenizer.

The full 151936-row vocabulary is kept, so the LM head costs what it costs in the real model,
but the embedding rows past the tokenizer's own vocabulary are scaled down: with tied weights
their logits stay near 0, greedy decoding picks tokens the tokenizer can decode, and the
gateway detokenizes real text rather than skipping unknown ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN2_0_5B_VOCAB = 151936
OUT_OF_TOKENIZER_SCALE = 1e-3  # logits of undecodable ids ~1e-3 of the real ones


def build_qwen2_shaped(out: Path, layers: int, dtype: str, vocab: int = QWEN2_0_5B_VOCAB) -> Path:
    """Saves the model and the tiny Qwen2 tokenizer into `out`; returns `out`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from gateway.tools.tiny_models.text import text_tokenizer

    tokenizer = text_tokenizer("qwen2")
    config = Qwen2Config(**_qwen2_0_5b_text_config(tokenizer, layers, vocab))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[len(tokenizer) :] *= OUT_OF_TOKENIZER_SCALE
    model = model.to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _qwen2_0_5b_text_config(tokenizer: object, layers: int, vocab: int = QWEN2_0_5B_VOCAB) -> dict:
    return qwen2_0_5b_config(
        layers, vocab, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )


def qwen2_0_5b_config(layers: int, vocab: int, bos: int, eos: int, pad: int) -> dict:
    """Qwen2-0.5B's text shape (hidden 896, 14 heads, 2 KV heads), `layers` deep: the one
    definition every bench model starts from."""
    return dict(
        vocab_size=vocab,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


# Qwen2-VL-2B's vision tower widths; its depth (32) is cut like the LM's layers on small CPUs
QWEN2_VL_VISION = dict(
    embed_dim=1280, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2,
)  # fmt: skip
IMAGE_SIDE = 224  # pixels: a multiple of 28 (patch x merge), so the processor does not resize
MROPE_SECTION = [8, 12, 12]  # Qwen2-VL's 16:24:24 split of head_dim / 2 = 32


def build_qwen2_vl_shaped(out: Path, layers: int, vision_depth: int, dtype: str) -> Path:
    """A Qwen2-VL model: the Qwen2-0.5B-shaped LM above, a Qwen2-VL vision tower of
    `vision_depth` blocks, the tiny tokenizer with Qwen2-VL's specials and an image processor
    that keeps IMAGE_SIDE x IMAGE_SIDE images as they are (64 image tokens each)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from gateway.tools.tiny_models.chat_template import (
        QWEN2_VL_IMAGE_PART,
        QWEN2_VL_VIDEO_PART,
        build_chat_template,
    )
    from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
    from gateway.tools.tiny_models.vision import (
        QWEN2_VL_SPECIALS,
        qwen2_vl_video_preprocessor_config,
    )

    template = build_chat_template(bos=False, image=QWEN2_VL_IMAGE_PART, video=QWEN2_VL_VIDEO_PART)
    spec = TokenizerSpec(extra_specials=QWEN2_VL_SPECIALS, add_bos=False, model_max_length=4096)
    tokenizer = build_bpe_tokenizer(spec, template)
    ids = tokenizer.convert_tokens_to_ids
    text = _qwen2_0_5b_text_config(tokenizer, layers)
    text["rope_parameters"] = dict(text["rope_parameters"], mrope_section=MROPE_SECTION)
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(QWEN2_VL_VISION, depth=vision_depth, hidden_size=text["hidden_size"]),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight[len(tokenizer) :] *= OUT_OF_TOKENIZER_SCALE
    model = model.to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    side = IMAGE_SIDE * IMAGE_SIDE
    Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": side},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    ).save_pretrained(out)
    video = dict(
        qwen2_vl_video_preprocessor_config(), size={"shortest_edge": 56 * 56, "longest_edge": side}
    )
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
    return out
