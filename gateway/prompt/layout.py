"""The text side of an HF processor's own layout step, without the media.

Some processors rewrite the prompt text before replacing placeholders, in their
`prepare_inputs_layout` (PaliGemma puts BOS after the last image token and ends the prompt with
"\\n"; Fuyu puts the image token first and appends its answer marker). That step looks at how
many images there are, not at their pixels, so we run the processor's own method with blank
stand-in images and splice the real items into the text it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protos.errors import InvalidRequest


@dataclass(frozen=True, slots=True, eq=False)
class TextLayout:
    """A processor whose `prepare_inputs_layout` rewrites the text.

    NOTE: only images get stand-ins; the processors that rewrite text do so for images.
    """

    processor: Any

    def apply(self, text: str, num_images: int) -> str:
        from PIL import Image

        images = [Image.new("RGB", (1, 1))] * num_images if num_images else None
        try:
            _, texts, *_ = self.processor.prepare_inputs_layout(
                images=images, text=[text], **_default_kwargs(self.processor)
            )
        except ValueError as exc:  # the processor's own rule about the prompt (Florence-2's tasks)
            raise InvalidRequest(f"the prompt does not fit the model's processor: {exc}") from exc
        return str(texts[0] if isinstance(texts, list | tuple) else texts)

    @property
    def add_special_tokens(self) -> bool | None:
        """The processor's own tokenizing default, when it sets one (Florence-2's layout adds
        BOS and EOS itself and tokenizes without special tokens); None: the tokenizer's."""
        value = _default_kwargs(self.processor).get("text_kwargs", {}).get("add_special_tokens")
        return None if value is None else bool(value)


def text_layout(processor: Any) -> TextLayout | None:
    """The processor's layout step when its class overrides transformers' default one."""
    from transformers import ProcessorMixin

    method = getattr(type(processor), "prepare_inputs_layout", None)
    if method is None or method is ProcessorMixin.prepare_inputs_layout:
        return None
    return TextLayout(processor)


def _default_kwargs(processor: Any) -> dict[str, Any]:
    """The processor's merged default call arguments, as some `__call__`s hand them to their
    layout step (GOT-OCR's reads `format` there)."""
    tokenizer = getattr(processor, "tokenizer", None)
    merged = processor._merge_kwargs(tokenizer_init_kwargs=getattr(tokenizer, "init_kwargs", {}))
    merged.pop("return_tensors", None)
    return dict(merged)
