"""Pixtral-tower vision-language models: Mistral 3 (Mistral3ForConditionalGeneration, a 2 x 2
patch merger) and LLaVA with a Pixtral tower (the pixtral-12b layout). Each image becomes rows
of [IMG] tokens ended by [IMG_BREAK], the last by [IMG_END]: its embeddings are not contiguous."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.text import LLAMA_ROPE, llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

PIXTRAL_SPECIALS: tuple[str, ...] = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
PIXTRAL_PATCH_SIZE = 8
PIXTRAL_LONGEST_EDGE = 64  # an image up to 8 x 8 patches
MISTRAL3_MERGE = 2  # Mistral 3 merges 2 x 2 patches into one token


def _pixtral_vision() -> dict[str, Any]:
    return dict(
        model_type="pixtral",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=16,
        image_size=PIXTRAL_LONGEST_EDGE,
        patch_size=PIXTRAL_PATCH_SIZE,
    )


def _tokenizer() -> Any:
    template = build_chat_template(bos=True, image="{{- '[IMG]' -}}")
    return build_bpe_tokenizer(TokenizerSpec(extra_specials=PIXTRAL_SPECIALS), template)


def _processor(tokenizer: Any, spatial_merge_size: int) -> Any:
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from protos.hf_processor import processor_class

    # NOTE: the real class: transformers' own export is a torchvision placeholder here
    pixtral_processor = processor_class("PixtralProcessor")

    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": PIXTRAL_LONGEST_EDGE},
        patch_size={"height": PIXTRAL_PATCH_SIZE, "width": PIXTRAL_PATCH_SIZE},
    )
    return pixtral_processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PIXTRAL_PATCH_SIZE,
        spatial_merge_size=spatial_merge_size,
        chat_template=tokenizer.chat_template,
    )


def _mistral_text(vocab_size: int) -> dict[str, Any]:
    return dict(
        model_type="mistral",
        **llama_like(vocab_size, rope_parameters=dict(LLAMA_ROPE), sliding_window=None),
    )


def build_mistral3(out: Path) -> None:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tokenizer = _tokenizer()
    config = Mistral3Config(
        vision_config=_pixtral_vision(),
        text_config=_mistral_text(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=MISTRAL3_MERGE,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
        **special_ids(len(tokenizer)),
    )
    seed = model_seed("mistral3")
    model = new_model(Mistral3ForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    save_checkpoint(out, model, _processor(tokenizer, MISTRAL3_MERGE))


def build_llava_pixtral(out: Path) -> None:
    """pixtral-12b's layout: LlavaForConditionalGeneration, a Pixtral tower, every patch a
    token (vision_feature_select_strategy "full", no CLS to drop)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer = _tokenizer()
    config = LlavaConfig(
        vision_config=_pixtral_vision(),
        text_config=_mistral_text(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        **special_ids(len(tokenizer)),
    )
    seed = model_seed("llava_pixtral")
    model = new_model(LlavaForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    save_checkpoint(out, model, _processor(tokenizer, 1))
