"""Which encoder states each decoder token attends: a request's cross-attention windows.

Part of the contract between the gateway (which knows where each image sits in the prompt)
and the LM (whose cross-attention reads the states): a window is `(first position, encoder
ranges [start, end))`; it holds every token from its position to the next window's, generated
tokens too. No windows: every token attends every state (Whisper, BART). A token before the
first window, or in a window without ranges, attends no image (Mllama's text before its first
<|image|>; see `kernels.cross_attention_mask` for what the model then does).
"""

from __future__ import annotations

from collections.abc import Sequence

# (first decoder position, encoder ranges it attends from there on)
CrossWindow = tuple[int, tuple[tuple[int, int], ...]]


def image_cross_windows(
    prompt: Sequence[int], image_token_id: int, attended: Sequence[tuple[int, int]]
) -> tuple[CrossWindow, ...]:
    """The windows of a prompt whose images feed cross-attention, as HF's MllamaProcessor
    masks them (`get_cross_attention_token_mask`): image i is attended from its image token
    up to the next image's; consecutive image tokens share the later end; the last image
    runs to the end.

    Args:
        prompt: the prompt's token ids, one `image_token_id` per image.
        attended: per image in prompt order, the range of encoder states its tokens attend
            (Mllama: its real tiles, not the padding ones).

    Raises:
        ValueError: the prompt's image tokens and the images disagree in number.
    """
    locations = [i for i, token in enumerate(prompt) if token == image_token_id]
    if len(locations) != len(attended):
        raise ValueError(
            f"the prompt has {len(locations)} image token(s) for {len(attended)} image(s)"
        )
    if not locations:
        return ()
    ends = [*locations[1:], len(prompt)]
    for i in range(len(locations) - 2, -1, -1):  # consecutive images share the later end
        if ends[i] == locations[i] + 1:
            ends[i] = ends[i + 1]
    windows: list[CrossWindow] = []
    for position in sorted(set(locations) | (set(ends) - {len(prompt)})):
        ranges = tuple(
            (int(a), int(b))
            for (a, b), start, end in zip(attended, locations, ends, strict=True)
            if start <= position < end
        )
        if not windows or windows[-1][1] != ranges:
            windows.append((position, ranges))
    return tuple(windows)
