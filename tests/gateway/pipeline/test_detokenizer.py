"""Incremental detokenization against byte-level BPE tokenizers trained here, offline."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from gateway.pipeline.detokenizer import IncrementalDetokenizer

REPLACEMENT = "\ufffd"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>"]
TEXTS = [
    "Hello world, this is a test.",
    "你好，世界！这是一个测试。",
    "中文分词和表情 😀🎉👍🏽 emoji",
    "naïve café déjà vu — “quotes”",
    "日本語のテキストも少し",
    "🤖 robots 🚀 rockets ✨ and 👨‍👩‍👧 families",
]


def _train_byte_level_bpe(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS * 20, trainer)
    return tokenizer


# 300: emoji stay split into single bytes; 400: merges that end one character and start the next.
@pytest.fixture(scope="module", params=[300, 400], ids=["vocab300", "vocab400"])
def raw_tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return _train_byte_level_bpe(request.param)


@pytest.fixture(scope="module", params=["tokenizers", "transformers"])
def tokenizer(request: pytest.FixtureRequest, raw_tokenizer: Tokenizer) -> object:
    if request.param == "tokenizers":
        return raw_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=raw_tokenizer)


def _stream(
    tokenizer: object,
    ids: list[int],
    chunks: list[int] | None = None,
    prompt: list[int] | None = None,
    skip_special_tokens: bool = True,
) -> tuple[list[str], str]:
    """Push `ids` in chunks of the given sizes (default 1); return the deltas and finish()."""
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip_special_tokens)
    deltas, position = [], 0
    for size in chunks or [1] * len(ids):
        deltas.append(detok.push(ids[position : position + size]))
        position += size
    assert position == len(ids)
    return deltas, detok.finish()


def test_the_corpus_really_splits_characters(raw_tokenizer: Tokenizer) -> None:
    ids = raw_tokenizer.encode("😀🎉👍🏽🤖🚀你好").ids
    assert sum(REPLACEMENT in raw_tokenizer.decode([i]) for i in ids) >= 5


@pytest.mark.parametrize("text", TEXTS)
def test_real_encodings_stream_without_replacement_chars(tokenizer: object, text: str) -> None:
    ids = _encode(tokenizer, text)
    deltas, tail = _stream(tokenizer, ids)
    assert "".join(deltas) == text
    assert tail == ""
    assert not any(REPLACEMENT in delta for delta in deltas)
    # Where a token ends inside a character, its delta is held back ("").
    splits = any(REPLACEMENT in tokenizer.decode([i]) for i in ids)  # type: ignore[attr-defined]
    assert ("" in deltas) == splits


def test_characters_are_released_exactly_when_complete(raw_tokenizer: Tokenizer) -> None:
    byte_tokens = [raw_tokenizer.token_to_id(c) for c in "ðŁĺĢ"]  # the 4 bytes of 😀 (F0 9F 98 80)
    assert raw_tokenizer.decode(byte_tokens) == "😀"
    detok = IncrementalDetokenizer(raw_tokenizer)
    assert [detok.push([t]) for t in byte_tokens] == ["", "", "", "😀"]
    assert detok.finish() == ""


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_sequences_add_up_to_decode(tokenizer: object, skip_special_tokens: bool) -> None:
    rng = random.Random(1234)
    vocab_size = _vocab_size(tokenizer)
    for _ in range(150):
        ids = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 30))]
        expected = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)  # type: ignore[attr-defined]
        deltas, tail = _stream(tokenizer, ids, skip_special_tokens=skip_special_tokens)
        assert "".join(deltas) + tail == expected, ids
        # Held back while incomplete: no delta ends inside a character.
        assert not any(delta.endswith(REPLACEMENT) for delta in deltas)


def test_chunked_pushes_match_single_pushes(tokenizer: object) -> None:
    rng = random.Random(7)
    ids = [i for text in TEXTS for i in _encode(tokenizer, text)]
    chunks = []
    while sum(chunks) < len(ids):
        chunks.append(min(rng.randint(1, 5), len(ids) - sum(chunks)))
    deltas, tail = _stream(tokenizer, ids, chunks=chunks)
    assert "".join(deltas) + tail == "".join(TEXTS)
    assert not any(REPLACEMENT in delta for delta in deltas)


def test_finish_flushes_an_incomplete_character(raw_tokenizer: Tokenizer) -> None:
    first_two_bytes = [raw_tokenizer.token_to_id(c) for c in "ðŁ"]
    detok = IncrementalDetokenizer(raw_tokenizer)
    assert detok.push([raw_tokenizer.token_to_id("a"), *first_two_bytes]) == "a"
    assert detok.finish() == raw_tokenizer.decode(first_two_bytes) == REPLACEMENT


def test_prompt_context(tokenizer: object) -> None:
    prompt = _encode(tokenizer, "<|im_start|>你好，世界")
    output = _encode(tokenizer, "！这是一个测试 🚀")
    deltas, tail = _stream(tokenizer, output, prompt=prompt)
    assert "".join(deltas) + tail == "！这是一个测试 🚀"
    assert not any(REPLACEMENT in delta for delta in deltas)


def test_prompt_ending_inside_a_character_is_not_context(raw_tokenizer: Tokenizer) -> None:
    emoji = [raw_tokenizer.token_to_id(c) for c in "ðŁĺĢ"]
    prompt = _encode(raw_tokenizer, "hi ") + emoji[:2]
    deltas, tail = _stream(raw_tokenizer, emoji[2:] + _encode(raw_tokenizer, "ok"), prompt=prompt)
    assert "".join(deltas) + tail == raw_tokenizer.decode(emoji[2:] + _encode(raw_tokenizer, "ok"))


def test_special_tokens(tokenizer: object) -> None:
    eos = _encode(tokenizer, "<|endoftext|>")
    assert len(eos) == 1
    ids = _encode(tokenizer, "你好") + eos + _encode(tokenizer, "ok")
    assert "".join(_stream(tokenizer, ids)[0]) == "你好ok"
    assert "".join(_stream(tokenizer, ids, skip_special_tokens=False)[0]) == "你好<|endoftext|>ok"


def test_leading_space_kept_with_prompt_context() -> None:
    """Decoders that strip a word's leading space at the start of a text need the prompt."""
    tokenizer = Tokenizer(models.WordLevel({"▁Hello": 0, "▁world": 1, "[UNK]": 2}, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    assert tokenizer.decode([1]) == "world"
    deltas, tail = _stream(tokenizer, [1, 1], prompt=[0])
    assert deltas == [" world", " world"] and tail == ""
    deltas, _ = _stream(tokenizer, [1, 1])
    assert "".join(deltas) == tokenizer.decode([1, 1]) == "world world"


def _encode(tokenizer: object, text: str) -> list[int]:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text).ids
    return tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]


def _vocab_size(tokenizer: object) -> int:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.get_vocab_size()
    return len(tokenizer)  # type: ignore[arg-type]
