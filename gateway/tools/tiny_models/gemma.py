"""Gemma-family vision-language models: Gemma 3 (bidirectional attention inside each image) and
PaliGemma (bidirectional attention over the image + prompt prefix), each with its HF processor
(PIL image backends) and a SigLIP tower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.named_specials import build_named_tokenizer
from gateway.tools.tiny_models.text import LLAMA_ROPE, llama_like
from gateway.tools.tiny_models.tokenizer import TokenizerSpec
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

GEMMA3_NAMES = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
GEMMA3_IMAGE_SIZE = 32
GEMMA3_PATCH_SIZE = 4  # (32 / 4)^2 = 64 patches, average-pooled to 4 x 4
GEMMA3_IMAGE_TOKENS = 16
GEMMA3_SLIDING_WINDOW = 8  # shorter than an image: sliding layers cut into its block
PALIGEMMA_IMAGE_SIZE = 32
PALIGEMMA_PATCH_SIZE = 8  # 16 image tokens
PALIGEMMA_IMAGE_TOKENS = (PALIGEMMA_IMAGE_SIZE // PALIGEMMA_PATCH_SIZE) ** 2
HALF = [0.5, 0.5, 0.5]  # SigLIP's image mean and std
# NOTE: Gemma embeddings are tied and scaled by sqrt(hidden): a large std makes the model
# repeat its last token (the recipe's Gemma 2 note).
GEMMA_EMB_STD = 0.02


def _siglip(image_size: int, patch_size: int) -> dict[str, Any]:
    return dict(
        model_type="siglip_vision_model",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )


def _gemma_text(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    return llama_like(
        vocab_size,
        head_dim=16,
        tie_word_embeddings=True,
        rope_parameters=dict(LLAMA_ROPE),
        **overrides,
    )


def build_gemma3(out: Path) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    template = build_chat_template(bos=True, image="{{- '<start_of_image>' -}}")
    spec = TokenizerSpec(extra_specials=tuple(GEMMA3_NAMES.values()))
    tokenizer = build_named_tokenizer(spec, template, GEMMA3_NAMES)
    ids = tokenizer.convert_tokens_to_ids
    text = _gemma_text(
        len(tokenizer),
        query_pre_attn_scalar=16,
        sliding_window=GEMMA3_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
    )
    text.pop("rope_parameters")  # NOTE: Gemma 3 has one rope per layer type; keep its defaults
    config = Gemma3Config(
        text_config=dict(model_type="gemma3_text", **text),
        vision_config=_siglip(GEMMA3_IMAGE_SIZE, GEMMA3_PATCH_SIZE),
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
        tie_word_embeddings=True,
    )
    seed = model_seed("gemma3")
    model = new_model(Gemma3ForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed, emb_std=GEMMA_EMB_STD)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE},
        image_mean=HALF,
        image_std=HALF,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        image_seq_length=GEMMA3_IMAGE_TOKENS,
    )
    save_checkpoint(out, model, processor)


def build_paligemma(out: Path) -> None:
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    # NOTE: PaliGemma prompts are plain text ("<image>" + prompt); the processor adds BOS
    # after the last image token and a "\n" at the end. The template is for `LLM.chat`.
    template = build_chat_template(bos=False, image="{{- '<image>' -}}")
    spec = TokenizerSpec(extra_specials=("<image>",))
    tokenizer = build_named_tokenizer(spec, template, {"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(
        size={"height": PALIGEMMA_IMAGE_SIZE, "width": PALIGEMMA_IMAGE_SIZE},
        image_mean=HALF,
        image_std=HALF,
    )
    image_processor.image_seq_length = PALIGEMMA_IMAGE_TOKENS
    # NOTE: built first: it adds PaliGemma's <loc*>/<seg*> tokens (and turns BOS off) on the
    # tokenizer, and the model's vocabulary must hold them, as the real checkpoints' does
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )
    config = PaliGemmaConfig(
        text_config=dict(model_type="gemma", **_gemma_text(len(tokenizer))),
        vision_config=_siglip(PALIGEMMA_IMAGE_SIZE, PALIGEMMA_PATCH_SIZE),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=64,
        hidden_size=64,
        tie_word_embeddings=True,
    )
    seed = model_seed("paligemma")
    model = new_model(PaliGemmaForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed, emb_std=GEMMA_EMB_STD)
    save_checkpoint(out, model, processor)
