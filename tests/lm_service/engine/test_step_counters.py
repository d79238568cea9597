"""A regression guard without a clock: engine steps and host syncs per generated token.

A fixed workload (prompt lengths, budgets, max_tokens) runs a known number of steps: one
prefill step per chunk the token budget allows, then one decode step per token. Each step
copies to the host once (the sampled ids); a step whose rows want logprobs twice more (one
copy per dtype). Any change that adds a step or a sync per token fails here.
"""

from __future__ import annotations

import pytest

from gateway.tools.tiny_models import tiny_model_path
from lm_service import Engine, EngineConfig, SamplingParams

PROMPT_LENS = (5, 12, 30, 47)  # 94 prompt tokens
MAX_TOKENS = 8


def _engine(**kwargs: object) -> Engine:
    config = {"block_size": 4, "num_blocks": 128, "max_num_seqs": 8, **kwargs}
    return Engine(EngineConfig(model=str(tiny_model_path("llama")), **config))


def _prompts() -> list[list[int]]:
    return [[1] + [10 + (i * 7 + n) % 300 for i in range(n - 1)] for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return _engine()


def _run(engine: Engine, params: SamplingParams) -> tuple[int, int, int]:
    before = (engine.counters.num_steps, engine.counters.num_host_syncs)
    outs = engine.generate(_prompts(), params)
    tokens = sum(len(o.token_ids) for o in outs)
    assert tokens == MAX_TOKENS * len(PROMPT_LENS)
    return (
        engine.counters.num_steps - before[0],
        engine.counters.num_host_syncs - before[1],
        tokens,
    )


def test_greedy_runs_one_step_per_token_and_syncs_once_per_step(engine: Engine) -> None:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    steps, syncs, tokens = _run(engine, params)
    # every prompt fits the default budget: one prefill step samples each request's first
    # token, then MAX_TOKENS - 1 decode steps, each sampling one token per request
    assert steps == MAX_TOKENS
    assert syncs == steps
    assert steps / tokens == 1 / len(PROMPT_LENS)


def test_chunked_prefill_adds_only_the_chunks() -> None:
    engine = _engine(max_num_batched_tokens=32)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    steps, syncs, _ = _run(engine, params)
    # 94 prompt tokens in chunks of at most 32 per step (decodes share the budget): the
    # prompts are done within 4 steps, and no step runs without sampling something after
    assert MAX_TOKENS < steps <= MAX_TOKENS + 3
    assert syncs <= steps


def test_logprobs_and_sampling_cost_two_more_syncs_per_step(engine: Engine) -> None:
    params = SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.8, seed=3, logprobs=5, ignore_eos=True
    )
    steps, syncs, _ = _run(engine, params)
    assert steps == MAX_TOKENS
    assert syncs == 3 * steps
