"""Parity of our models (native and Transformers fallback) with HF transformers.

Each test drives a model the way the engine does: two requests of different lengths flattened
into one step, a real paged KV cache with a small block size and shuffled block ids, a chunked
prefill next to a prefill, then decode steps one token at a time. At every step the logits of
every new token must match HF's own full forward of the same sequence, and the greedy tokens
must match HF `generate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway.tools.tiny_models import (  # noqa: E402
    LLAMA_FAMILY,
    MULTIMODAL_MODELS,
    QWEN2_5_VL_VISION,
    TEXT_MODELS,
    rescale_init,
    tiny_model_path,
)
from kernels.attention import AttentionBackend  # noqa: E402
from kernels.forward_context import ForwardContext, forward_context  # noqa: E402
from kernels.metadata import AttentionMetadata  # noqa: E402
from lm_service.engine.kv_cache import allocate_kv_caches  # noqa: E402
from lm_service.models.base import BaseCausalLM  # noqa: E402
from lm_service.models.registry import load_model  # noqa: E402

BLOCK_SIZE = 4
NUM_BLOCKS = 32
PROMPT_A = [1, 17, 93, 204, 55, 301, 12, 88, 140, 7, 230]  # 11 tokens: > both sliding windows
PROMPT_B = [1, 250, 61, 33, 199, 42]  # 6 tokens, prefilled in two chunks
NUM_DECODE_STEPS = 4


@dataclass(eq=False)
class Request:
    """One request of the harness: its tokens, positions and, optionally, embedding rows."""

    token_ids: list[int]
    positions: torch.Tensor | None = None  # [L] or [3, L]; None: 0..L-1
    embeds: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> [hidden]
    num_computed: int = 0
    block_ids: list[int] = field(default_factory=list)

    def position_slice(self, start: int, end: int, mrope: bool) -> torch.Tensor:
        if self.positions is not None:
            return self.positions[..., start:end]
        flat = torch.arange(start, end)
        return flat.expand(3, -1) if mrope else flat


class PagedHarness:
    """Runs flattened steps of a model over a paged KV cache with shuffled block ids."""

    def __init__(self, model: BaseCausalLM, seed: int = 0) -> None:
        self.model = model
        self.caches = allocate_kv_caches(
            model.kv_cache_spec(),
            AttentionBackend.TORCH,
            NUM_BLOCKS,
            BLOCK_SIZE,
            torch.device("cpu"),
        )
        order = torch.randperm(NUM_BLOCKS, generator=torch.Generator().manual_seed(seed))
        self.free_blocks = order.tolist()

    def step(self, work: list[tuple[Request, int]]) -> list[torch.Tensor]:
        """Computes `n` new tokens of each (sequence, n); returns their logits [n, vocab]."""
        ids, positions, rows = [], [], []
        for seq, n in work:
            start, end = seq.num_computed, seq.num_computed + n
            while len(seq.block_ids) * BLOCK_SIZE < end:
                seq.block_ids.append(self.free_blocks.pop())
            rows.extend(
                (len(ids) + p - start, seq.embeds[p]) for p in seq.embeds if start <= p < end
            )
            ids.extend(seq.token_ids[start:end])
            positions.append(seq.position_slice(start, end, self.model.uses_mrope))
        meta = AttentionMetadata.build(
            query_lens=[n for _, n in work],
            seq_lens=[seq.num_computed + n for seq, n in work],
            block_tables=[seq.block_ids for seq, _ in work],
            block_size=BLOCK_SIZE,
        )
        logits = self._run(torch.tensor(ids), torch.cat(positions, dim=-1), rows, meta)
        for seq, n in work:
            seq.num_computed += n
        return list(logits.split([n for _, n in work]))

    @torch.inference_mode()
    def _run(self, ids, positions, rows, meta) -> torch.Tensor:
        embeds = None
        if rows:
            embeds = self.model.get_input_embeddings(ids).clone()  # [T, hidden]
            for row, vector in rows:
                embeds[row] = vector
        with forward_context(ForwardContext(meta, self.caches)):
            hidden = self.model(
                None if embeds is not None else ids, positions, inputs_embeds=embeds
            )
        return self.model.compute_logits(hidden)  # [T, vocab] float32


# ----------------------------------------------------------------------------- HF reference


def hf_model(name: str, path: Path | None = None):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    path = path or tiny_model_path(name)
    if name == "qwen2_audio":
        from transformers import Qwen2AudioForConditionalGeneration as cls
    elif name in MULTIMODAL_MODELS or name == "qwen2_5_vl":
        cls = AutoModelForImageTextToText
    else:
        cls = AutoModelForCausalLM
    extra = {"attn_implementation": "eager"} if name == "gemma2" else {}
    return cls.from_pretrained(path, dtype=torch.float32, **extra).eval()


@torch.inference_mode()
def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([token_ids])).logits[0].float()  # [L, vocab]


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], num_tokens: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=num_tokens,
        min_new_tokens=num_tokens,
        do_sample=False,
    )
    return out[0, len(prompt) :].tolist()


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    atol = 1e-4 * max(1.0, ref.abs().max().item())
    diff = (ours - ref).abs().max().item()
    assert diff <= atol, f"{what}: max |logit diff| {diff:.3g} > {atol:.3g}"


# ----------------------------------------------------------------------------- the scenario


def run_two_requests(model: BaseCausalLM, ref) -> tuple[list[int], list[int]]:
    """A: full prefill, then decodes. B: a 4-token chunk next to A's prefill, the rest next to
    A's first decode, then decodes. Every new token's logits are checked against HF."""
    harness = PagedHarness(model)
    a, b = Request(list(PROMPT_A)), Request(list(PROMPT_B))
    plan = [[(a, len(PROMPT_A)), (b, 4)], [(a, 1), (b, len(PROMPT_B) - 4)]]
    plan += [[(b, 1), (a, 1)]] * NUM_DECODE_STEPS  # order flipped: rows follow the step
    for step, work in enumerate(plan):
        for (seq, n), logits in zip(work, harness.step(work), strict=True):
            start = seq.num_computed - n
            ref_logits = hf_logits(ref, seq.token_ids[: seq.num_computed])[start:]
            assert_close(logits, ref_logits, f"step {step}, request {'AB'[seq is b]}")
            if seq.num_computed == len(seq.token_ids):
                seq.token_ids.append(int(logits[-1].argmax()))
    return a.token_ids[len(PROMPT_A) :], b.token_ids[len(PROMPT_B) :]


def check_model(name: str, model_impl: str, path: Path | None = None) -> BaseCausalLM:
    loaded = load_model(str(path or tiny_model_path(name)), model_impl=model_impl)
    assert loaded.impl_name == model_impl == loaded.model.impl_name
    ref = hf_model(name, path)
    tokens_a, tokens_b = run_two_requests(loaded.model, ref)
    assert tokens_a == hf_greedy(ref, PROMPT_A, len(tokens_a))
    assert tokens_b == hf_greedy(ref, PROMPT_B, len(tokens_b))
    assert len(set(tokens_a)) > 1, "degenerate tiny model: greedy repeats one token"
    return loaded.model


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_transformers_backend_matches_hf(name: str) -> None:
    model = check_model(name, "transformers")
    assert type(model).__name__ == "TransformersForCausalLM"


@pytest.mark.parametrize("name", LLAMA_FAMILY + ("mistral_swa",) + MULTIMODAL_MODELS)
def test_native_matches_hf(name: str) -> None:
    model = check_model(name, "native")
    assert type(model).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("name", MULTIMODAL_MODELS)
def test_transformers_backend_runs_multimodal_language_model(name: str) -> None:
    check_model(name, "transformers")


# ----------------------------------------------------------------------------- Qwen2.5-VL


@pytest.fixture(scope="module")
def qwen2_5_vl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL checkpoint with the text config of the tiny Qwen2-VL."""
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text_config = AutoConfig.from_pretrained(tiny_model_path("qwen2_vl")).text_config.to_dict()
    text_config.pop("model_type", None)
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(QWEN2_5_VL_VISION),
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    rescale_init(model, seed=25)
    path = tmp_path_factory.mktemp("qwen2_5_vl")
    model.save_pretrained(path)
    return path


@pytest.mark.seed_row("Qwen2_5_VLForConditionalGeneration", "generate")
def test_native_qwen2_5_vl_language_model(qwen2_5_vl_path: Path) -> None:
    check_model("qwen2_5_vl", "native", qwen2_5_vl_path)


# ----------------------------------------------------------------------------- M-RoPE


def mrope_sequence(hidden_size: int) -> Request:
    """3 text tokens, a 2x3 image grid of embedding rows, 3 more text tokens (Qwen2-VL style
    positions: the image spans t=3, h=3..4, w=3..5; text resumes at max + 1 = 6)."""
    grid = [(3, 3 + h, 3 + w) for h in range(2) for w in range(3)]
    columns = [(p, p, p) for p in range(3)] + grid + [(p, p, p) for p in range(6, 9)]
    positions = torch.tensor(columns).t().contiguous()  # [3, 12]
    generator = torch.Generator().manual_seed(7)
    embeds = {3 + i: torch.randn(hidden_size, generator=generator) * 0.2 for i in range(6)}
    tokens = [12, 40, 77] + [9] * 6 + [120, 31, 5]
    return Request(tokens, positions=positions, embeds=embeds)


@torch.inference_mode()
def hf_mrope_logits(ref, seq: Request, length: int) -> torch.Tensor:
    language_model = ref.model.language_model
    embeds = language_model.get_input_embeddings()(torch.tensor(seq.token_ids[:length]))
    for position, vector in seq.embeds.items():
        if position < length:
            embeds[position] = vector
    hidden = language_model(
        inputs_embeds=embeds[None], position_ids=seq.positions[:, None, :length]
    ).last_hidden_state
    return ref.lm_head(hidden)[0].float()


@pytest.mark.parametrize(
    ("name", "model_impl"),
    [
        ("qwen2_vl", "native"),
        ("qwen2_vl", "transformers"),
        ("qwen2_5_vl", "native"),
        ("qwen2_5_vl", "transformers"),
    ],
)
def test_mrope_positions_and_embeddings(
    name: str, model_impl: str, request: pytest.FixtureRequest
) -> None:
    path = (
        tiny_model_path(name) if name == "qwen2_vl" else request.getfixturevalue("qwen2_5_vl_path")
    )
    loaded = load_model(str(path), model_impl=model_impl)
    model, ref = loaded.model, hf_model(name, path)
    assert model.uses_mrope
    seq = mrope_sequence(loaded.text_config.hidden_size)
    prompt_len = len(seq.token_ids)
    harness = PagedHarness(model, seed=3)
    other = Request([1, 60, 70, 80, 90])  # a text-only request in the same steps
    work = [(seq, 7), (other, 5)]
    for step in range(4):
        outputs = harness.step(work)
        done = seq.num_computed
        assert_close(
            outputs[0], hf_mrope_logits(ref, seq, done)[done - work[0][1] :], f"step {step}"
        )
        if done >= prompt_len:
            next_position = int(seq.positions.max()) + 1
            seq.token_ids.append(int(outputs[0][-1].argmax()))
            column = torch.full((3, 1), next_position)
            seq.positions = torch.cat([seq.positions, column], dim=1)
        work = [(seq, prompt_len - done if done < prompt_len else 1)]
    # HF's own M-RoPE: its mrope_section must have reordered frequencies (not plain RoPE)
    flat = Request(seq.token_ids, positions=torch.arange(len(seq.token_ids)).expand(3, -1))
    flat.embeds = seq.embeds
    assert not torch.allclose(
        hf_mrope_logits(ref, flat, prompt_len), hf_mrope_logits(ref, seq, prompt_len), atol=1e-3
    )
