"""Incremental detokenization: turn a stream of token ids into a stream of text deltas.

Byte-level BPE (GPT-2, Llama 3, Qwen) splits one character over several tokens: "中" is three
bytes, an emoji four, and a token can end in the middle of one. Decoding each token alone would
emit U+FFFD for the incomplete bytes. As in vLLM, we decode a short window of recent tokens
twice, with and without the new ones, and emit the difference only when the window's text does
not end in U+FFFD; otherwise the new tokens wait for the bytes that complete the character.

NOTE: offsets index `self._ids`, which starts with a few prompt tokens (context for decoders
that drop a word's leading space at the start of a text) followed by every output token.
`read_offset` is always a token boundary where the text decoded so far ended cleanly, so the
deltas concatenate to `tokenizer.decode(output_ids)` for byte-level tokenizers.

A fast tokenizer whose Rust `decode` is the whole of its decoding (`_backend_of`) streams
through the Rust `DecodeStream`, which runs the same window algorithm natively: one call per
output instead of two decodes per token (this runs for every token of every stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"
# How many prompt tokens to keep as context, as vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET.
NUM_PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Decodes output token ids incrementally, never emitting half a character.

    Args:
        tokenizer: a transformers tokenizer (fast or slow) or a `tokenizers.Tokenizer`.
        prompt_token_ids: the prompt; its last few tokens give the first output token context.
        skip_special_tokens: drop special tokens from the text, as `decode` does.
        spaces_between_special_tokens: passed to slow transformers tokenizers (others ignore it).
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: list[int] | None = None,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._decode_kwargs = _decode_kwargs(
            tokenizer, skip_special_tokens, spaces_between_special_tokens
        )
        self._backend = _backend_of(tokenizer)
        self._ids: list[int] = self._prompt_context(prompt_token_ids or [])
        self.prefix_offset = 0
        self.read_offset = len(self._ids)
        self.num_output_tokens = 0
        self._stream = None
        if self._backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(list(self._ids), skip_special_tokens)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add output tokens; return the text that is now final (maybe "")."""
        if self._stream is None:
            return "".join(self._push_one(token_id) for token_id in token_ids)
        pieces = []
        for token_id in token_ids:  # one at a time: text is released as soon as it is whole
            self._ids.append(token_id)
            piece = self._stream.step(self._backend, token_id)
            if piece:
                # where `finish` decodes from: a token boundary where the text ended cleanly
                self.prefix_offset, self.read_offset = self.read_offset, len(self._ids)
                pieces.append(piece)
        self.num_output_tokens += len(token_ids)
        return "".join(pieces)

    def finish(self) -> str:
        """Flush the held-back tail (an incomplete character decodes as U+FFFD, as decode does)."""
        prefix_text, new_text = self._decode_window()
        self.prefix_offset = self.read_offset = len(self._ids)
        return new_text[len(prefix_text) :]

    def _push_one(self, token_id: int) -> str:
        self._ids.append(token_id)
        self.num_output_tokens += 1
        prefix_text, new_text = self._decode_window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""  # nothing new yet, or a character still incomplete
        self.prefix_offset, self.read_offset = self.read_offset, len(self._ids)
        return new_text[len(prefix_text) :]

    def _decode_window(self) -> tuple[str, str]:
        """Text of [prefix_offset, read_offset) and of [prefix_offset, end)."""
        prefix_text = self._decode(self._ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self._ids[self.prefix_offset :])
        return prefix_text, new_text

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        if self._backend is not None:  # the same text, without the Python wrapper per call
            return self._backend.decode(token_ids, self._decode_kwargs["skip_special_tokens"])
        return self._tokenizer.decode(token_ids, **self._decode_kwargs)

    def _prompt_context(self, prompt_token_ids: list[int]) -> list[int]:
        """The last prompt tokens, unless they end inside a character: the first output token
        must start on a character boundary for the deltas to add up to the decoded output."""
        context = list(prompt_token_ids[-NUM_PROMPT_CONTEXT_TOKENS:])
        return [] if self._decode(context).endswith(REPLACEMENT_CHAR) else context


def _decode_kwargs(
    tokenizer: Any, skip_special_tokens: bool, spaces_between_special_tokens: bool
) -> dict[str, bool]:
    kwargs = {"skip_special_tokens": skip_special_tokens}
    if _is_transformers_tokenizer(tokenizer):
        kwargs["spaces_between_special_tokens"] = spaces_between_special_tokens
    return kwargs


def _backend_of(tokenizer: Any) -> Any:
    """The Rust `tokenizers.Tokenizer` (itself, or the one) whose `decode` gives exactly what the transformers
    tokenizer's `decode` gives (a fast tokenizer that neither overrides decoding nor cleans
    up spaces afterwards), or None: then every decode goes through the wrapper."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    cls = type(tokenizer)
    if not isinstance(tokenizer, TokenizersBackend):
        return None
    if cls._decode is not TokenizersBackend._decode:
        return None
    if cls.decode is not PreTrainedTokenizerBase.decode:
        return None
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return tokenizer._tokenizer


def _is_transformers_tokenizer(tokenizer: Any) -> bool:
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(tokenizer, PreTrainedTokenizerBase)
