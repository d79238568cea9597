"""Audio models: Qwen2-Audio (Whisper-style tower + Qwen2 LM) and Whisper, with processors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import QWEN2_AUDIO_PART, build_chat_template
from gateway.tools.tiny_models.text import QWEN_ROPE, llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import (
    finish_lm,
    generation_config,
    model_seed,
    new_model,
    rescale_init,
    save_checkpoint,
    silence_special_tokens,
    silenced_ids,
)

WHISPER_MAX_TARGET_POSITIONS = 128
QWEN2_AUDIO_SPECIALS: tuple[str, ...] = ("<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")
WHISPER_LANGUAGES: tuple[str, ...] = ("en", "zh", "de", "fr")
# NOTE: Whisper's specials sit at the END of the vocab and <|notimestamps|> must be the last id:
# generate() reads every id above no_timestamps_token_id as a timestamp.
WHISPER_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    *(f"<|{lang}|>" for lang in WHISPER_LANGUAGES),
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)
SAMPLING_RATE = 16000
AUDIO_CHUNK_SECONDS = 2
AUDIO_HOP_LENGTH = 160
AUDIO_MEL_BINS = 32
# NOTE: the audio encoders accept exactly chunk_length * sr / hop mel frames, halved by a conv.
AUDIO_SOURCE_POSITIONS = AUDIO_CHUNK_SECONDS * SAMPLING_RATE // AUDIO_HOP_LENGTH // 2


def whisper_feature_extractor() -> Any:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=AUDIO_MEL_BINS,
        sampling_rate=SAMPLING_RATE,
        hop_length=AUDIO_HOP_LENGTH,
        chunk_length=AUDIO_CHUNK_SECONDS,
        n_fft=400,
        return_attention_mask=True,
    )


def qwen2_audio_encoder_config() -> dict[str, Any]:
    """The tiny Qwen2-Audio encoder: 2 layers, width 64, this file's mel bins and 30 s window."""
    return dict(
        num_mel_bins=AUDIO_MEL_BINS,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        d_model=64,
        max_source_positions=AUDIO_SOURCE_POSITIONS,
    )


def build_qwen2_audio(out: Path) -> None:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

    template = build_chat_template(bos=False, audio=QWEN2_AUDIO_PART)
    spec = TokenizerSpec(extra_specials=QWEN2_AUDIO_SPECIALS, add_bos=False)
    tokenizer = build_bpe_tokenizer(spec, template)
    config = Qwen2AudioConfig(
        audio_config=qwen2_audio_encoder_config(),
        text_config=dict(
            model_type="qwen2", **llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE))
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        **special_ids(len(tokenizer)),
    )
    seed = model_seed("qwen2_audio")
    model = new_model(Qwen2AudioForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    processor = Qwen2AudioProcessor(
        feature_extractor=whisper_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=template,
        audio_token="<|AUDIO|>",
        audio_bos_token="<|audio_bos|>",
        audio_eos_token="<|audio_eos|>",
    )
    save_checkpoint(out, model, processor)


def _whisper_generation_config(tokenizer: Any) -> Any:
    ids = tokenizer.convert_tokens_to_ids
    endoftext = ids("<|endoftext|>")
    config = generation_config(
        endoftext,
        endoftext,
        endoftext,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        is_multilingual=True,
        lang_to_id={f"<|{lang}|>": ids(f"<|{lang}|>") for lang in WHISPER_LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        suppress_tokens=[],
        begin_suppress_tokens=None,
        max_length=WHISPER_MAX_TARGET_POSITIONS,
    )
    config._from_model_config = False  # NOTE: otherwise generate() ignores the Whisper fields
    return config


def build_whisper(out: Path) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    spec = TokenizerSpec(
        tail_specials=WHISPER_SPECIALS,
        add_bos=False,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=WHISPER_MAX_TARGET_POSITIONS,
    )
    tokenizer = build_bpe_tokenizer(spec, None)
    ids = tokenizer.convert_tokens_to_ids
    endoftext, start = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=AUDIO_MEL_BINS,
        encoder_layers=2,
        decoder_layers=2,
        d_model=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=AUDIO_SOURCE_POSITIONS,
        max_target_positions=WHISPER_MAX_TARGET_POSITIONS,
        pad_token_id=endoftext,
        bos_token_id=endoftext,
        eos_token_id=endoftext,
        decoder_start_token_id=start,
        suppress_tokens=[],
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )
    seed = model_seed("whisper")
    model = new_model(WhisperForConditionalGeneration, config, seed)
    rescale_init(model, seed)
    silence_special_tokens(model, silenced_ids(tokenizer, [start], tied=True))
    model.generation_config = _whisper_generation_config(tokenizer)
    processor = WhisperProcessor(feature_extractor=whisper_feature_extractor(), tokenizer=tokenizer)
    save_checkpoint(out, model, processor)
