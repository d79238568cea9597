"""Encoder-decoder models whose encoder the LM service runs itself: BART (text) and Florence-2
(its DaViT tower in the image encoder service, its BART encoder over image + text tokens)."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.tiny_models.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TokenizerSpec,
    build_bpe_tokenizer,
)
from gateway.tools.tiny_models.weights import (
    generation_config,
    model_seed,
    new_model,
    rescale_init,
    save_checkpoint,
    silence_special_tokens,
    silenced_ids,
)

ENCODER_DECODER_MODELS: tuple[str, ...] = ("bart", "florence2")
BART_MAX_POSITIONS = 128


def build_bart(out: Path) -> None:
    """A tiny BART whose generation forces `<s>` first, as facebook/bart-large-cnn does
    (`forced_bos_token_id`), and starts the decoder from `</s>` (`decoder_start_token_id`)."""
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = build_bpe_tokenizer(TokenizerSpec(model_max_length=BART_MAX_POSITIONS), None)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=BART_MAX_POSITIONS,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=EOS_ID,
        forced_bos_token_id=BOS_ID,
        forced_eos_token_id=None,
        tie_word_embeddings=True,
    )
    seed = model_seed("bart")
    model = new_model(BartForConditionalGeneration, config, seed)
    # NOTE: post-LN layers renormalize every step: large weights keep greedy outputs varied
    rescale_init(model, seed, std=1.0)
    # NOTE: </s> starts the decoder and <s> is forced first: their (tied) rows must stay
    silence_special_tokens(model, silenced_ids(tokenizer, [BOS_ID, EOS_ID], tied=True))
    model.generation_config = generation_config(
        BOS_ID,
        EOS_ID,
        PAD_ID,
        decoder_start_token_id=EOS_ID,
        forced_bos_token_id=BOS_ID,
        num_beams=1,
        do_sample=False,
    )
    save_checkpoint(out, model, tokenizer)


FLORENCE2_IMAGE_SIZE = 32


def build_florence2(out: Path) -> None:
    """A tiny Florence-2: a two-stage DaViT tower, its projector, and a BART language model
    that encodes [image tokens, <s>, text, </s>] and decodes from </s>."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    spec = TokenizerSpec(
        extra_specials=("<image>",),
        named_specials=(("image_token", "<image>"),),
        model_max_length=256,
    )
    tokenizer = build_bpe_tokenizer(spec, None)
    vision = dict(
        depths=(1, 1),
        patch_size=(7, 3),
        patch_stride=(4, 2),
        patch_padding=(3, 1),
        patch_prenorm=(False, True),
        embed_dim=(32, 64),
        num_heads=(2, 4),
        num_groups=(2, 4),
        window_size=2,
        drop_path_rate=0.0,
        projection_dim=64,
        max_position_embeddings=8,
    )
    text = dict(
        vocab_size=len(tokenizer),
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=256,
        dropout=0.0,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=EOS_ID,
        forced_bos_token_id=None,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=image_token_id)
    seed = model_seed("florence2")
    model = new_model(Florence2ForConditionalGeneration, config, seed)
    rescale_init(model, seed, std=1.0)  # NOTE: post-LN BART, as build_bart
    silence_special_tokens(model, silenced_ids(tokenizer, [BOS_ID, EOS_ID], tied=True))
    model.generation_config = generation_config(
        BOS_ID, EOS_ID, PAD_ID, decoder_start_token_id=EOS_ID, num_beams=1, do_sample=False
    )
    size = {"height": FLORENCE2_IMAGE_SIZE, "width": FLORENCE2_IMAGE_SIZE}
    pixels = torch.zeros(1, 3, FLORENCE2_IMAGE_SIZE, FLORENCE2_IMAGE_SIZE)
    with torch.inference_mode():
        num_tokens = model.get_image_features(pixels).pooler_output.shape[1]
    images = CLIPImageProcessorPil(
        size=size, crop_size=size, do_center_crop=False, image_seq_length=num_tokens
    )
    save_checkpoint(out, model, Florence2Processor(image_processor=images, tokenizer=tokenizer))
