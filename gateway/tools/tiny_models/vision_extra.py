"""Architectures added beyond issue 10's list, to show a new one needs no mesh code: only a tiny
checkpoint (config, tokenizer with the model's special tokens, its own HF processor on the PIL
image backend, chat template).

- Aya Vision: a SigLIP tower, pixel-shuffle + SwiGLU projector and a Cohere2 language model;
  GotOcr2 tiling, each tile tagged `TILE_<k>` and the thumbnail `TILE_GLOBAL` between
  `<|START_OF_IMG|>` / `<|END_OF_IMG|>` (the tags stay prompt text, the patches take rows).
- GOT-OCR 2.0: a SAM-style windowed ViT, two strided convs and a Qwen2 language model; its
  processor writes `<imgpad>` x 256 per image (its fixed `num_image_tokens`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.text import LLAMA_ROPE, QWEN_ROPE, llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

TILE_SIZE = 32
PATCH_SIZE = 8
SMALL_VISION = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
)
AYA_MAX_TILES = 4
# GOT-OCR's processor always writes 256 tokens per image: a 256-pixel image in 4-pixel patches
# (64 x 64) that the projector's two stride-2 convs bring to 16 x 16.
GOT_IMAGE_SIZE = 256
GOT_PATCH_SIZE = 4
GOT_SPECIALS: tuple[str, ...] = ("<img>", "</img>", "<imgpad>")
AYA_NAMED: tuple[tuple[str, str], ...] = (
    ("image_token", "<image>"),
    ("start_of_img_token", "<|START_OF_IMG|>"),
    ("end_of_img_token", "<|END_OF_IMG|>"),
    ("img_patch_token", "<|IMG_PATCH|>"),
    ("img_line_break_token", "<|IMG_LINE_BREAK|>"),
)
AYA_SPECIALS: tuple[str, ...] = (
    *(token for _, token in AYA_NAMED),
    "TILE_GLOBAL",
    *(f"TILE_{k}" for k in range(1, AYA_MAX_TILES + 1)),
)


def _finish(name: str, model_cls: Any, config: Any, tokenizer: Any) -> Any:
    seed = model_seed(name)
    model = new_model(model_cls, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    return model


def build_aya_vision(out: Path) -> None:
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        Cohere2Config,
    )
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    template = build_chat_template(bos=True, image="{{- '<image>' -}}")
    spec = TokenizerSpec(extra_specials=AYA_SPECIALS, model_max_length=1024)
    tokenizer = build_bpe_tokenizer(spec, template)
    downsample = 2
    text = llama_like(len(tokenizer), rope_parameters=dict(LLAMA_ROPE), tie_word_embeddings=True)
    config = AyaVisionConfig(
        vision_config=dict(
            SMALL_VISION,
            model_type="siglip_vision_model",
            image_size=TILE_SIZE,
            patch_size=PATCH_SIZE,
            vision_use_head=False,
        ),
        text_config=Cohere2Config(**text, logit_scale=0.5, sliding_window=16),
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=downsample,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
        **special_ids(len(tokenizer)),
    )
    model = _finish("aya_vision", AyaVisionForConditionalGeneration, config, tokenizer)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE_SIZE, "width": TILE_SIZE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=AYA_MAX_TILES,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        img_size=TILE_SIZE,
        downsample_factor=downsample,
        chat_template=template,
        **dict(AYA_NAMED),
    )
    save_checkpoint(out, model, processor)


def build_got_ocr2(out: Path) -> None:
    from transformers import (
        GotOcr2Config,
        GotOcr2ForConditionalGeneration,
        GotOcr2Processor,
        Qwen2Config,
    )
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    template = build_chat_template(bos=False, image="{{- '<img><imgpad></img>\\n' -}}")
    spec = TokenizerSpec(extra_specials=GOT_SPECIALS, add_bos=False, model_max_length=1024)
    tokenizer = build_bpe_tokenizer(spec, template)
    text = llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE), tie_word_embeddings=True)
    config = GotOcr2Config(
        vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            image_size=GOT_IMAGE_SIZE,
            patch_size=GOT_PATCH_SIZE,
            window_size=8,
            global_attn_indexes=[1],
        ),
        text_config=Qwen2Config(**text),
        image_token_index=tokenizer.convert_tokens_to_ids("<imgpad>"),
        image_seq_length=256,
        tie_word_embeddings=True,
        **special_ids(len(tokenizer)),
    )
    model = _finish("got_ocr2", GotOcr2ForConditionalGeneration, config, tokenizer)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": GOT_IMAGE_SIZE, "width": GOT_IMAGE_SIZE}
    )
    processor = GotOcr2Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )
    save_checkpoint(out, model, processor)
