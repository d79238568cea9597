"""Which encoder positions each decoder token may attend to: windows of a request's prompt.

Most encoder-decoder models let every decoder token attend to every encoder position. Mllama
does not: a token attends only to the images whose window holds it (HF's processor builds
that `cross_attention_mask`), and a token before the first image attends to none — HF then
lets it attend to ALL encoder positions and zeroes its MLP output in each cross-attention
layer (`full_text_row_masked_out_mask`). The windows are `protos.cross_windows`; a window
holds every later token, generated ones too (HF repeats the mask's last row while
generating). No windows: attend everything.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from protos.cross_windows import CrossWindow


def cross_token_masks(
    query_lens: Sequence[int],
    first_positions: Sequence[int],
    enc_lens: Sequence[int],
    windows: Sequence[Sequence[CrossWindow]],
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per request: its new tokens, the position of the first, its encoder length, its windows.

    Returns:
        attend_mask `[T, max_enc_len]` bool (True: attend) or None when no request has
        windows; no_image `[T]` bool, True for a token that attends no image (before the
        first window, or a request without encoder states).
    """
    width = max(enc_lens, default=0)
    any_windows = any(windows)
    rows: list[torch.Tensor] = []
    no_image: list[bool] = []
    for query_len, first, enc_len, request_windows in zip(
        query_lens, first_positions, enc_lens, windows, strict=True
    ):
        if not request_windows:  # every token alike: attends all its states, or none
            no_image.extend([not enc_len] * query_len)
            if any_windows:
                row = torch.arange(width) < enc_len
                rows.extend([row] * query_len)
            continue
        starts = [start for start, _ in request_windows]
        for position in range(first, first + query_len):
            index = bisect.bisect_right(starts, position) - 1
            ranges = request_windows[index][1] if index >= 0 else ()
            empty = not enc_len or not ranges
            no_image.append(empty)
            row = torch.zeros(width, dtype=torch.bool)
            if empty:
                row[:enc_len] = True
            for start, end in ranges:
                row[start:end] = True
            rows.append(row)
    attend = torch.stack(rows).to(device) if any_windows and rows else None
    return attend, torch.tensor(no_image, dtype=torch.bool, device=device)
