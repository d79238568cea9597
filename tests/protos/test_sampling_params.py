from __future__ import annotations

import pytest

from protos.errors import InvalidRequest
from protos.sampling_params import SamplingParams


def test_defaults_match_vllm() -> None:
    params = SamplingParams()
    assert params.max_tokens == 16
    assert params.min_tokens == 0
    assert params.temperature == 1.0
    assert params.top_k == 0 and params.top_p == 1.0 and params.min_p == 0.0
    assert params.seed is None and params.logprobs is None
    assert params.repetition_penalty == 1.0
    assert params.presence_penalty == 0.0 and params.frequency_penalty == 0.0
    assert params.stop_token_ids == () and params.stop == () and not params.ignore_eos
    assert not params.is_greedy and not params.has_penalties


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
        ({"temperature": float("nan")}, "temperature must be a number"),
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
        ({"max_tokens": 2.5}, "max_tokens must be an integer, got 2.5"),
        ({"min_tokens": -1}, "min_tokens must be >= 0, got -1"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens must be <= max_tokens (10), got 20"),
        ({"top_k": -2}, "top_k must be -1 or 0 (disabled) or at least 1, got -2"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"min_p": -0.1}, "min_p must be in [0, 1], got -0.1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
        ({"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2], got 2.5"),
        ({"frequency_penalty": -3}, "frequency_penalty must be in [-2, 2], got -3"),
        ({"logprobs": -1}, "logprobs must be a non-negative integer, got -1"),
        ({"seed": "7"}, "seed must be an integer, got '7'"),
        ({"stop_token_ids": [3, -1]}, "stop_token_ids must be non-negative integers, got [3, -1]"),
        ({"stop": ["ok", ""]}, "stop must be non-empty strings"),
        ({"begin_suppress_token_ids": [-2]}, "begin_suppress_token_ids must be non-negative"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        SamplingParams(**kwargs)
    assert message in str(excinfo.value)


def test_lists_become_tuples_so_params_stay_hashable() -> None:
    params = SamplingParams(stop_token_ids=[5, 6], stop="###")
    assert params.stop_token_ids == (5, 6)
    assert params.stop == ("###",)
    assert hash(params) == hash(SamplingParams(stop_token_ids=(5, 6), stop=("###",)))


@pytest.mark.parametrize(
    ("kwargs", "greedy"),
    [
        ({"temperature": 0.0}, True),
        ({"temperature": 1e-6}, True),
        ({"top_k": 1}, True),
        ({"temperature": 0.7, "top_k": 2}, False),
        ({"top_k": -1}, False),
    ],
)
def test_is_greedy(kwargs: dict, greedy: bool) -> None:
    assert SamplingParams(**kwargs).is_greedy is greedy


def test_max_tokens_none_means_until_the_context_is_full() -> None:
    assert SamplingParams(max_tokens=None, min_tokens=100).max_tokens is None


def test_has_penalties() -> None:
    assert SamplingParams(repetition_penalty=1.2).has_penalties
    assert SamplingParams(presence_penalty=-0.5).has_penalties
    assert SamplingParams(frequency_penalty=0.1).has_penalties
