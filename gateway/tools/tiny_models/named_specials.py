"""Tokenizers whose special tokens are also named attributes (`tokenizer.boi_token`, ...).

Some HF processors read their media tokens off the tokenizer (Gemma 3's `boi_token`,
PaliGemma's `image_token`), so the tiny tokenizer must carry them by name, as the real ones do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.tools.tiny_models.tokenizer import BASE_SPECIALS, TokenizerSpec, build_bpe_tokenizer


def build_named_tokenizer(
    spec: TokenizerSpec, chat_template: str | None, names: Mapping[str, str]
) -> Any:
    """The shared BPE tokenizer of `spec`, with `names` (attribute -> token) as named specials.

    Every token named must be one of `spec.extra_specials` (so its id is fixed); the others
    stay special (unnamed), so `all_special_ids` still lists every one of them.
    """
    from transformers import PreTrainedTokenizerFast

    missing = sorted(set(names.values()) - set(spec.extra_specials))
    if missing:
        raise ValueError(f"named specials {missing} are not in the spec's extra_specials")
    base = build_bpe_tokenizer(spec, chat_template)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token="<unk>",
        extra_special_tokens=dict(names),
        model_max_length=spec.model_max_length,
    )
    unnamed = [t for t in (*BASE_SPECIALS[4:], *spec.extra_specials) if t not in names.values()]
    tokenizer.add_special_tokens(
        {"extra_special_tokens": unnamed}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = chat_template
    return tokenizer
