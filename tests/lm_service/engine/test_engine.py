"""Engine behaviour: batch invariance, preemption, chunked prefill, prefix cache, sampling."""

from __future__ import annotations

import random

import pytest
import torch

from gateway.tools.tiny_models import tiny_model_path  # noqa: E402
from kernels.attention import AttentionBackend
from lm_service import Engine, EngineConfig, SamplingParams
from lm_service.engine.kv_cache import bytes_per_block
from protos.errors import InvalidRequest, Overloaded
from protos.lm_messages import MultiModalSpan

GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


def _prompts(n: int = 16, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(10, 400) for _ in range(rng.randint(1, 60))] for _ in range(n)]


def _engine(name: str = "llama", **kwargs: object) -> Engine:
    defaults = {"block_size": 4, "num_blocks": 512, "max_num_seqs": 16}
    return Engine(EngineConfig(model=str(tiny_model_path(name)), **{**defaults, **kwargs}))


@pytest.fixture(scope="module")
def alone() -> list[tuple[int, ...]]:
    engine = _engine()
    return [engine.generate([p], GREEDY)[0].token_ids for p in _prompts()]


def test_batched_equals_alone(alone: list[tuple[int, ...]]) -> None:
    outs = _engine().generate(_prompts(), GREEDY)
    assert [o.token_ids for o in outs] == alone


def test_preemption_gives_the_same_tokens(alone: list[tuple[int, ...]]) -> None:
    engine = _engine(num_blocks=40)  # 160 slots for 16 requests of up to 71 tokens
    outs = engine.generate(_prompts(), GREEDY)
    assert engine.scheduler.stats.num_preemptions > 0
    assert [o.token_ids for o in outs] == alone
    assert engine.scheduler.block_pool.num_free_blocks == 40


def test_chunked_prefill_gives_the_same_tokens(alone: list[tuple[int, ...]]) -> None:
    engine = _engine(max_num_batched_tokens=8)
    outs = engine.generate(_prompts(), GREEDY)
    assert [o.token_ids for o in outs] == alone


def test_repeated_prompt_hits_the_prefix_cache(alone: list[tuple[int, ...]]) -> None:
    engine = _engine()
    prompt = _prompts()[3]
    first = engine.generate([prompt], GREEDY)[0]
    second = engine.generate([prompt], GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= len(prompt) - 4 - 1  # whole blocks, never the last token
    assert second.num_cached_tokens > 0
    assert second.token_ids == first.token_ids == alone[3]


def test_media_spans_change_the_output_and_the_cache_key() -> None:
    engine = _engine()
    hidden = engine.hidden_size
    prompt = [1] + [50] * 12 + [60, 61]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, hidden, generator=gen)
    b = torch.randn(12, hidden, generator=gen)
    out_a = engine.generate_with_spans(prompt, [MultiModalSpan(1, 12, "hash-a", a)], GREEDY)
    out_b = engine.generate_with_spans(prompt, [MultiModalSpan(1, 12, "hash-b", b)], GREEDY)
    again_a = engine.generate_with_spans(prompt, [MultiModalSpan(1, 12, "hash-a", a)], GREEDY)
    assert out_a.token_ids != out_b.token_ids
    assert out_b.num_cached_tokens == 0  # differs only in the image: no KV shared
    assert again_a.num_cached_tokens > 0 and again_a.token_ids == out_a.token_ids


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy() -> None:
    engine = _engine()
    prompts = _prompts(4)
    seeded = [
        SamplingParams(max_tokens=12, temperature=1.0, seed=s, ignore_eos=True) for s in range(4)
    ]
    first = [o.token_ids for o in engine.generate(prompts, seeded)]
    second = [o.token_ids for o in engine.generate(prompts[::-1], seeded[::-1])][::-1]
    assert first == second
    assert len(set(first)) > 1
    top1 = SamplingParams(max_tokens=10, temperature=0.8, top_k=1, ignore_eos=True)
    greedy = [o.token_ids for o in engine.generate(prompts, GREEDY)]
    assert [o.token_ids for o in engine.generate(prompts, top1)] == greedy


def test_incremental_interface_and_abort_frees_blocks() -> None:
    engine = _engine()
    free = engine.scheduler.block_pool.num_free_blocks
    engine.add_request("a", _prompts()[0], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("b", _prompts()[1], SamplingParams(max_tokens=3, temperature=0.0))
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for _ in range(4):
        for out in engine.step():
            seen[out.request_id].extend(out.new_token_ids)
    assert len(seen["b"]) == 3 and len(seen["a"]) == 4
    assert engine.abort("a") and not engine.abort("a")
    assert not engine.has_unfinished()
    assert engine.scheduler.block_pool.num_free_blocks == free


def test_user_errors_are_typed() -> None:
    engine = _engine(num_blocks=8)
    with pytest.raises(Overloaded, match="needs"):
        engine.add_request(None, [1] * 100)
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        engine.add_request(None, [1, 10**6])
    with pytest.raises(InvalidRequest, match="empty"):
        engine.add_request(None, [])
    with pytest.raises(InvalidRequest, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(InvalidRequest, match="embeddings of shape"):
        engine.add_request(None, [1, 2, 3], GREEDY, [MultiModalSpan(1, 2, "h", torch.zeros(3, 4))])


def test_max_tokens_is_capped_by_the_context() -> None:
    engine = _engine(max_model_len=20)
    out = engine.generate([[1] * 15], SamplingParams(max_tokens=100, temperature=0.0))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_kv_cache_sized_from_memory_in_the_backends_layout() -> None:
    memory = 300_000
    engine = _engine(num_blocks=None, kv_cache_memory=memory)
    spec = engine.loaded.model.kv_cache_spec()
    num_blocks = memory // bytes_per_block(spec, AttentionBackend.TORCH, 4)
    assert 0 < num_blocks < 16 * engine.max_model_len // 4  # the budget binds, not the cap
    assert engine.num_blocks == num_blocks == engine.scheduler.block_pool.num_free_blocks
    want = AttentionBackend.TORCH.kv_cache_shape(num_blocks, 4, spec.num_kv_heads, spec.head_dim)
    assert len(engine.runner.kv_caches) == spec.num_layers
    assert all(tuple(k.shape) == tuple(v.shape) == want for k, v in engine.runner.kv_caches)


def test_a_masked_span_equals_its_contiguous_runs_and_survives_chunking() -> None:
    # An item whose embeddings skip positions (row tags, [IMG_BREAK]) must place each row where
    # two contiguous spans would, also when a prefill chunk ends inside the item.
    prompt = [1] + list(range(20, 44))
    hidden = _engine().hidden_size
    rows = torch.randn(10, hidden, generator=torch.Generator().manual_seed(1))
    mask = (True,) * 4 + (False,) * 2 + (True,) * 6  # positions 3..14; 7 and 8 keep tokens
    masked = [MultiModalSpan(3, 12, "img", rows, mask)]
    runs = [MultiModalSpan(3, 4, "img", rows[:4]), MultiModalSpan(9, 6, "img", rows[4:])]
    whole = _engine().generate_with_spans(prompt, masked, GREEDY)
    assert whole.token_ids == _engine().generate_with_spans(prompt, runs, GREEDY).token_ids
    for budget in (5, 8, 11):  # chunk boundaries before, inside and after the skipped tokens
        chunked = _engine(max_num_batched_tokens=budget)
        assert chunked.generate_with_spans(prompt, masked, GREEDY).token_ids == whole.token_ids
    other = torch.randn(10, hidden, generator=torch.Generator().manual_seed(2))
    swapped = [MultiModalSpan(3, 12, "img2", other, mask)]
    assert _engine().generate_with_spans(prompt, swapped, GREEDY).token_ids != whole.token_ids


def test_a_span_mask_must_fit_the_span_and_its_rows() -> None:
    with pytest.raises(InvalidRequest, match="is_embed mask of 2"):
        MultiModalSpan(1, 3, "h", None, (True, False))
    engine = _engine()
    bad = MultiModalSpan(1, 3, "h", torch.zeros(3, engine.hidden_size), (True, False, True))
    with pytest.raises(InvalidRequest, match=r"embeddings of shape \[2,"):
        engine.add_request(None, [1, 2, 3, 4], GREEDY, [bad])
