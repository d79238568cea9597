"""Audio-language models that run on the generic, processor-driven path (no native tower):
Audio Flamingo 3 (a Whisper-style encoder, avg-pooled, projected into a Qwen2 LM). Not a row
of the seed: it shows that an audio architecture transformers implements needs no mesh code."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.tiny_models.audio import (
    AUDIO_MEL_BINS,
    AUDIO_SOURCE_POSITIONS,
    whisper_feature_extractor,
)
from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.text import QWEN_ROPE, llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

AUDIOFLAMINGO3_SOUND = "<sound>"
AUDIOFLAMINGO3_PART = "{{- '<sound>' -}}"


def build_audioflamingo3(out: Path) -> None:
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
    )

    template = build_chat_template(bos=False, audio=AUDIOFLAMINGO3_PART)
    spec = TokenizerSpec(extra_specials=(AUDIOFLAMINGO3_SOUND,), add_bos=False)
    tokenizer = build_bpe_tokenizer(spec, template)
    config = AudioFlamingo3Config(
        audio_config=dict(
            model_type="audioflamingo3_encoder",
            num_mel_bins=AUDIO_MEL_BINS,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            hidden_size=64,
            max_source_positions=AUDIO_SOURCE_POSITIONS,
        ),
        text_config=dict(
            model_type="qwen2", **llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE))
        ),
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIOFLAMINGO3_SOUND),
        **special_ids(len(tokenizer)),
    )
    seed = model_seed("audioflamingo3")
    model = new_model(AudioFlamingo3ForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    processor = AudioFlamingo3Processor(
        feature_extractor=whisper_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=template,
        audio_token=AUDIOFLAMINGO3_SOUND,
    )
    save_checkpoint(out, model, processor)
