"""HF transformers as the reference, and vLLM's check_logprobs_close rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

TOP_N = 5


def hf_greedy(
    model: Any, prompt: Sequence[int], max_tokens: int, **inputs: Any
) -> tuple[list[int], list[set[int]]]:
    """HF greedy tokens and, per position, the ids of its top-5 logprobs."""
    ids = torch.tensor([list(prompt)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **inputs,
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    tops = [set(step[0].float().topk(TOP_N).indices.tolist()) for step in out.logits]
    return tokens, tops


def our_tops(logprobs: Sequence[Any]) -> list[set[int]]:
    return [set(entry.top_token_ids[:TOP_N]) for entry in logprobs]


def check_logprobs_close(
    ours: Sequence[int],
    our_top: Sequence[set[int]],
    ref: Sequence[int],
    ref_top: Sequence[set[int]],
    name: str = "",
) -> int:
    """Greedy tokens must match; where they first differ, each side's token must be in the
    other's top-5, and the comparison stops there. Returns the number of matching tokens."""
    assert len(ours) == len(ref), f"{name}: {len(ours)} tokens vs HF's {len(ref)}"
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if a != b:
            assert a in ref_top[i] and b in our_top[i], (
                f"{name}: token {i} differs ({a} vs HF {b}) and is not in the other's top-{TOP_N}"
            )
            return i
    return len(ours)


def assert_greedy_matches(
    outputs: Sequence[Any], references: Sequence[tuple[list[int], list[set[int]]]], name: str
) -> None:
    """Every engine output (RequestOutput with top-5 logprobs) equals HF's greedy tokens in full.

    NOTE: stricter than check_logprobs_close alone: the tiny models here have clear winners,
    so a divergence at all (even within the top-5) is a bug.
    """
    for index, (out, (ref, ref_top)) in enumerate(zip(outputs, references, strict=True)):
        label = f"{name} prompt {index}"
        ours = list(out.token_ids)
        matched = check_logprobs_close(ours, our_tops(out.logprobs), ref, ref_top, label)
        assert matched == len(ref), f"{label}: only {matched} of {len(ref)} tokens equal HF's"
