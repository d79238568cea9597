"""Text encoder-decoder models: BART (BartForConditionalGeneration), for the engine's
cross-attention path where the LM service runs the encoder itself."""

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

ENCODER_DECODER_MODELS: tuple[str, ...] = ("bart",)
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
