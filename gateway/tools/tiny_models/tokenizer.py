"""The tiny models' tokenizers, trained offline on a small in-code corpus.

Byte-level BPE with Qwen2's pre-tokenizer (every generative model) and a hand-built WordPiece
vocabulary (the BERT models). Training is deterministic: tokenizer.json is byte-identical
across runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tokenizers import (
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

# NOTE: ids 0..5 are the same in every BPE tokenizer; model-specific specials follow from 6.
BASE_SPECIALS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID, IM_START_ID, IM_END_ID = range(6)
BPE_VOCAB_SIZE = 448
WORDPIECE_VOCAB_SIZE = 400
BERT_MAX_POSITIONS = 128
BERT_SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

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


@dataclass(frozen=True, slots=True)
class TokenizerSpec:
    """What a model's byte-level BPE tokenizer holds beyond the shared corpus.

    Args:
        extra_specials: specials placed right after BASE_SPECIALS (ids 6, 7, ...).
        tail_specials: specials appended after the learned vocabulary (Whisper).
        add_bos: whether encoding prepends `<s>` (Llama style) or nothing (Qwen/GPT style).
        bos_token, eos_token, pad_token: the tokenizer's named special tokens.
        model_max_length: the context length the tokenizer reports.
        named_specials: (attribute, token) pairs a processor reads from the tokenizer
            (InternVL's `context_image_token`); each token must also be a special above.
        extra_corpus: lines trained on besides CORPUS (the demo's questions and answers).
    """

    extra_specials: tuple[str, ...] = ()
    tail_specials: tuple[str, ...] = ()
    add_bos: bool = True
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    pad_token: str = "<pad>"
    model_max_length: int = 512
    named_specials: tuple[tuple[str, str], ...] = ()
    extra_corpus: tuple[str, ...] = ()


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
    tok.train_from_iterator(CORPUS + spec.extra_corpus, trainer)
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
    # NOTE: only when set, so the other models' tokenizer files stay byte-identical
    named = (
        {"model_specific_special_tokens": dict(spec.named_specials)} if spec.named_specials else {}
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token="<unk>",
        extra_special_tokens=specials,
        model_max_length=spec.model_max_length,
        **named,
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
