"""Where a processor puts an image when it does not replace a placeholder in the text.

transformers' processors expand a placeholder per item (`replace_image_token`); a few older
ones (BLIP-2) skip that and write the image's tokens before the tokenized prompt, BOS
included, in their own `__call__`. Which one a processor does is found by running it once on a
blank stand-in image and a probe text: no model-specific rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protos.errors import Unsupported
from protos.modality import Modality

_PROBE_TEXT = "a"
_STAND_IN_SIZE = (64, 64)


def before_prompt_replacement(processor: Any, modalities: Sequence[Modality]) -> str | None:
    """The text a processor puts before the prompt for one image; None when it replaces a
    placeholder in the text instead (the usual case)."""
    from transformers import ProcessorMixin

    if Modality.IMAGE not in modalities:
        return None
    if type(processor).replace_image_token is not ProcessorMixin.replace_image_token:
        return None
    from PIL import Image

    image = Image.new("RGB", _STAND_IN_SIZE)
    with_image = list(processor(text=[_PROBE_TEXT], images=[image])["input_ids"][0])
    text_only = list(processor.tokenizer([_PROBE_TEXT])["input_ids"][0])
    head = with_image[: len(with_image) - len(text_only)]
    if not head or with_image[len(head) :] != text_only:
        raise Unsupported(
            f"{type(processor).__name__} has no replace_image_token and does not put images "
            "before the prompt: its prompts cannot be spliced"
        )
    return "".join(processor.tokenizer.convert_ids_to_tokens(head))
