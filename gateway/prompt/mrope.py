"""M-RoPE positions of a Qwen2-VL / Qwen2.5-VL prompt: a port of HF's `get_rope_index`.

Every prompt token gets three position ids (temporal, height, width):

- a text token gets the same id on all three axes, one more than the token before it;
- the pad tokens of one image or video (its "vision run") get grid positions: with the merged
  grid `t x h' x w'` (`h' = h // spatial_merge_size`), token `(i, j, k)` is at
  `start + (floor(i * time_interval), j, k)`, where `start` is the position the next text token
  would have had. `time_interval` is 1 except for Qwen2.5-VL videos
  (`second_per_grid_t * tokens_per_second`);
- after a vision run, text continues from the largest position so far plus one.

NOTE: HF transformers 5.x continues text after a vision run from `start + max(h', w')`, which is
the same for images but smaller than "largest so far plus one" for a video whose scaled temporal
extent exceeds `max(h', w')`; its own `rope_deltas` (decode positions) still use the largest
position plus one. We follow the Qwen reference implementation (transformers 4.x, vLLM): the
largest position plus one, so prompt text and decode positions never overlap the video.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class VisionRun:
    """The pad tokens of one image or video inside a prompt.

    Args:
        offset: index of the run's first token in the prompt.
        grid_thw: the item's patch grid before spatial merging (`image_grid_thw` row).
        time_interval: temporal position step per temporal grid (1.0 for images).
    """

    offset: int
    grid_thw: tuple[int, int, int]
    time_interval: float = 1.0

    def num_tokens(self, spatial_merge_size: int) -> int:
        t, h, w = self.grid_thw
        return t * h * w // spatial_merge_size**2


def vision_positions(
    start: int, grid_thw: tuple[int, int, int], spatial_merge_size: int, time_interval: float
) -> torch.Tensor:
    """[3, t * h' * w'] int64 grid positions of one vision run, offset by `start`."""
    t, h, w = grid_thw[0], grid_thw[1] // spatial_merge_size, grid_thw[2] // spatial_merge_size
    # NOTE: scale in float32 and then floor, exactly like HF (`(arange * interval).long()`).
    temporal = (torch.arange(t, dtype=torch.float32) * time_interval).long()  # [t]
    grid_t, grid_h, grid_w = torch.meshgrid(
        temporal, torch.arange(h), torch.arange(w), indexing="ij"
    )  # each [t, h', w']
    return torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + start


def text_positions(start: int, length: int) -> torch.Tensor:
    """[3, length] int64: `start, start + 1, ...` on all three axes."""
    return torch.arange(start, start + length).expand(3, -1)


def mrope_positions(
    num_tokens: int, runs: Sequence[VisionRun], spatial_merge_size: int
) -> torch.Tensor:
    """[3, num_tokens] int64 M-RoPE positions of a prompt whose vision runs are `runs`.

    Args:
        num_tokens: prompt length T.
        runs: the image/video pad runs, in any order; they must not overlap.
        spatial_merge_size: the vision tower's `spatial_merge_size`.
    """
    chunks: list[torch.Tensor] = []
    cursor = 0  # first prompt token not placed yet
    next_position = 0  # position of the next text token
    for run in sorted(runs, key=lambda r: r.offset):
        if run.offset < cursor:
            raise ValueError(f"vision runs overlap at token {run.offset}")
        chunks.append(text_positions(next_position, run.offset - cursor))
        start = next_position + run.offset - cursor
        grid = vision_positions(start, run.grid_thw, spatial_merge_size, run.time_interval)
        chunks.append(grid)
        cursor = run.offset + grid.shape[1]
        next_position = int(grid.max()) + 1 if grid.numel() else start
    if cursor > num_tokens:
        raise ValueError(f"vision runs end at token {cursor}, past the prompt ({num_tokens})")
    chunks.append(text_positions(next_position, num_tokens - cursor))
    return torch.cat(chunks, dim=1)


def mrope_position_delta(positions: torch.Tensor) -> int:
    """HF's `rope_deltas`: decode token n (0-based in the sequence) sits at `n + delta`.

    Args:
        positions: [3, T] prompt positions from `mrope_positions`.
    """
    num_tokens = positions.shape[1]
    return int(positions.max()) + 1 - num_tokens if num_tokens else 0
