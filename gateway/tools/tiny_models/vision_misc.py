"""More vision-language layouts: BLIP-2 (a Q-Former; image tokens before the prompt), Chameleon
(images become VQ token ids) and Fuyu (raw patches, rows of image tokens ended by |NEWLINE|)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.named_specials import build_named_tokenizer
from gateway.tools.tiny_models.text import special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

BLIP2_IMAGE_SIZE = 32
BLIP2_QUERY_TOKENS = 8
# NOTE: BLIP-2's processor puts the image before the prompt: chat messages' image parts render
# as nothing (the template must still accept them).
NO_PLACEHOLDER_PART = "{{- '' -}}"


def _small_encoder(**extra: Any) -> dict[str, Any]:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        **extra,
    )


def _opt_text(vocab_size: int) -> dict[str, Any]:
    return dict(
        model_type="opt",
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        word_embed_proj_dim=64,
        dropout=0.0,
        tie_word_embeddings=True,
        **special_ids(vocab_size),
    )


def build_blip2(out: Path) -> None:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    template = build_chat_template(bos=False, image=NO_PLACEHOLDER_PART)
    # NOTE: "<image>" unnamed: Blip2Processor reads a named one as a str and then fails on
    # its `.content`; the real checkpoints' tokenizers do not name it either
    tokenizer = build_bpe_tokenizer(TokenizerSpec(extra_specials=("<image>",)), template)
    config = Blip2Config(
        vision_config=_small_encoder(image_size=BLIP2_IMAGE_SIZE, patch_size=8),
        qformer_config=_small_encoder(encoder_hidden_size=64, cross_attention_frequency=1),
        text_config=_opt_text(len(tokenizer)),
        num_query_tokens=BLIP2_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    seed = model_seed("blip2")
    model = new_model(Blip2ForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    image_processor = BlipImageProcessorPil(
        size={"height": BLIP2_IMAGE_SIZE, "width": BLIP2_IMAGE_SIZE}
    )
    processor = Blip2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_query_tokens=BLIP2_QUERY_TOKENS,
        chat_template=template,
    )
    save_checkpoint(out, model, processor)


CHAMELEON_NAMES = {
    "image_token": "<image>",
    "boi_token": "<racm3:break>",
    "eoi_token": "<eoss>",
    "sep_token": "<reserved08706>",
}
CHAMELEON_IMAGE_SIZE = 32
CHAMELEON_CODES = 16  # VQ codebook size; a 32 x 32 image is downsampled 8x: 16 codes
CHAMELEON_IMAGE_TOKENS = 16


def chameleon_code_token(code: int) -> str:
    """The vocabulary entry of VQ code `code`: Chameleon spells its digits as letters A-J."""
    return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"


def build_chameleon(out: Path) -> None:
    from transformers import (
        ChameleonConfig,
        ChameleonForConditionalGeneration,
        ChameleonProcessor,
    )
    from transformers.models.chameleon.image_processing_pil_chameleon import (
        ChameleonImageProcessorPil,
    )

    template = build_chat_template(bos=True, image="{{- '<image>' -}}")
    codes = tuple(chameleon_code_token(code) for code in range(CHAMELEON_CODES))
    spec = TokenizerSpec(extra_specials=(*CHAMELEON_NAMES.values(), *codes))
    tokenizer = build_named_tokenizer(spec, template, CHAMELEON_NAMES)
    config = ChameleonConfig(
        **{k: v for k, v in _llama_text(len(tokenizer)).items() if k != "model_type"},
        vq_config=dict(
            embed_dim=8,
            num_embeddings=CHAMELEON_CODES,
            latent_channels=32,
            resolution=CHAMELEON_IMAGE_SIZE,
            base_channels=32,  # NOTE: its GroupNorms take 32 groups
            channel_multiplier=[1, 1, 1, 1],
            num_res_blocks=1,
            attn_resolutions=[],
        ),
        vocabulary_map=tokenizer.get_vocab(),
    )
    seed = model_seed("chameleon")
    model = new_model(ChameleonForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": CHAMELEON_IMAGE_SIZE},
        crop_size={"height": CHAMELEON_IMAGE_SIZE, "width": CHAMELEON_IMAGE_SIZE},
    )
    processor = ChameleonProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=CHAMELEON_IMAGE_TOKENS,
    )
    processor.chat_template = template
    save_checkpoint(out, model, processor)


def _llama_text(vocab_size: int) -> dict[str, Any]:
    from gateway.tools.tiny_models.text import LLAMA_ROPE, llama_like

    return llama_like(vocab_size, rope_parameters=dict(LLAMA_ROPE))


FUYU_SPECIALS: tuple[str, ...] = ("|SPEAKER|", "|NEWLINE|", "<0x04>")  # image, row end, answer
FUYU_IMAGE_SIZE = 32
FUYU_PATCH_SIZE = 8


def build_fuyu(out: Path) -> None:
    """Fuyu: raw 8 x 8 patches projected into a Persimmon LM.
    NOTE: HF's FuyuProcessor with the PIL image processor fails in transformers 5.24 (see the
    Fuyu parity test); the checkpoint is complete so the row runs once that is fixed."""
    from transformers import FuyuConfig, FuyuForCausalLM, FuyuProcessor
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    template = build_chat_template(bos=True, image=NO_PLACEHOLDER_PART)
    tokenizer = build_bpe_tokenizer(TokenizerSpec(extra_specials=FUYU_SPECIALS), template)
    text = _llama_text(len(tokenizer))
    text.pop("rope_parameters")
    text.pop("num_key_value_heads")
    config = FuyuConfig(
        text_config=dict(model_type="persimmon", **text),
        image_size=FUYU_IMAGE_SIZE,
        patch_size=FUYU_PATCH_SIZE,
        image_token_id=tokenizer.convert_tokens_to_ids("|SPEAKER|"),
        hidden_size=64,
        **special_ids(len(tokenizer)),
    )
    seed = model_seed("fuyu")
    model = new_model(FuyuForCausalLM, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    image_processor = FuyuImageProcessorPil(
        size={"height": FUYU_IMAGE_SIZE, "width": FUYU_IMAGE_SIZE},
        patch_size={"height": FUYU_PATCH_SIZE, "width": FUYU_PATCH_SIZE},
    )
    processor = FuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.chat_template = template
    save_checkpoint(out, model, processor)
