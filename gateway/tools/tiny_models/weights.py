"""Seeded random weights with clear greedy winners, silenced specials, and saving a checkpoint."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

INIT_STD = 0.2
PERTURB_1D_STD = 0.1


def _tensor_seed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode())


@torch.no_grad()
def rescale_init(
    model: torch.nn.Module,
    seed: int,
    std: float = INIT_STD,
    emb_std: float | None = None,
    perturb_1d: float = PERTURB_1D_STD,
) -> None:
    """Redraw every >=2-D weight from N(0, std) with its own generator; jitter 1-D weights.

    Large weights give clear greedy winners; jittered norms and biases catch an engine that
    ignores them. Frozen parameters (sinusoidal positions) are left alone.
    """
    embedding = model.get_input_embeddings().weight
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        generator = torch.Generator().manual_seed(_tensor_seed(seed, name))
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if param.dim() >= 2:
            scale = emb_std if (emb_std is not None and param is embedding) else std
            param.copy_(noise * scale)
        else:
            param.add_(noise * perturb_1d)


@torch.no_grad()
def silence_special_tokens(model: torch.nn.Module, token_ids: Sequence[int]) -> None:
    """Zero the output-embedding rows of special tokens so random models never emit them.

    NOTE: with tied embeddings this also zeroes the input embedding; the caller must keep the
    token that starts every sequence (BOS / decoder start) out of `token_ids`.
    """
    output = model.get_output_embeddings()
    output.weight[list(token_ids)] = 0.0
    if getattr(output, "bias", None) is not None:
        output.bias[list(token_ids)] = 0.0


def silenced_ids(tokenizer: Any, keep: Sequence[int], tied: bool) -> list[int]:
    ids = sorted(set(tokenizer.all_special_ids))
    return [i for i in ids if not (tied and i in keep)]


def model_seed(name: str) -> int:
    return zlib.crc32(name.encode())


# ----------------------------------------------------------------------- saving


def generation_config(bos: int, eos: int, pad: int, **extra: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **extra)


def finish_lm(model: Any, tokenizer: Any, *, seed: int, emb_std: float | None = None) -> None:
    """Rescale weights, silence specials and set the generation config of a causal LM."""
    tied = bool(model.config.get_text_config().tie_word_embeddings)
    starts_with_bos = tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    keep = [tokenizer.bos_token_id] if starts_with_bos else []
    rescale_init(model, seed, emb_std=emb_std)
    silence_special_tokens(model, silenced_ids(tokenizer, keep, tied))
    model.generation_config = generation_config(
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )


def save_checkpoint(out: Path, model: Any, *savables: Any) -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    model.save_pretrained(out)
    for savable in savables:
        savable.save_pretrained(out)


def new_model(model_cls: Any, config: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    return model_cls(config).eval()
