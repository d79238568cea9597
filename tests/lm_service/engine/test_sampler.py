from __future__ import annotations

import math

import pytest
import torch

from lm_service.engine.request import Request
from lm_service.engine.sampler import (
    Penalties,
    Sampler,
    SamplingMetadata,
    apply_penalties,
)
from protos.sampling_params import SamplingParams

VOCAB = 32
EOS = 1
PROBS = [0.5, 0.3, 0.15, 0.05]  # a 4-token distribution for the masking tests


def make_request(request_id: str = "r", prompt: list[int] | None = None, **params) -> Request:
    return Request(request_id, prompt or [3, 4], SamplingParams(**params), eos_token_id=EOS)


def sample(
    logits: torch.Tensor, requests: list[Request], vocab_size: int = VOCAB
) -> tuple[list[int], list | None]:
    metadata = SamplingMetadata.from_requests(requests, vocab_size, "cpu")
    output = Sampler()(logits, metadata)
    return output.token_ids.tolist(), output.logprobs


def repeated_rows(num_rows: int, **params) -> tuple[torch.Tensor, list[Request]]:
    logits = torch.tensor(PROBS).log().expand(num_rows, -1).contiguous()  # [num_rows, 4]
    return logits, [make_request(str(i), [0], **params) for i in range(num_rows)]


def test_greedy_is_argmax_and_leaves_logits_untouched() -> None:
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    tokens, logprobs = sample(logits, [make_request(str(i), temperature=0.0) for i in range(6)])
    assert tokens == logits.argmax(dim=-1).tolist()
    assert logprobs is None
    assert torch.equal(logits, before)


def test_fast_path_metadata_has_nothing_to_apply() -> None:
    metadata = SamplingMetadata.from_requests([make_request(temperature=0.0)], VOCAB, "cpu")
    assert metadata.is_plain_greedy
    assert metadata.top_k is None and metadata.top_p is None and metadata.min_p is None
    assert metadata.penalties is None and metadata.banned_mask is None


def test_top_k_one_equals_greedy_in_a_mixed_batch() -> None:
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1))
    requests = [
        make_request("a", top_k=1, temperature=1.5),
        make_request("b", temperature=1.0),
        make_request("c", temperature=0.0),
        make_request("d", top_k=1, seed=3),
    ]
    tokens, _ = sample(logits, requests)
    argmax = logits.argmax(dim=-1).tolist()
    assert [tokens[0], tokens[2], tokens[3]] == [argmax[0], argmax[2], argmax[3]]


def test_seeded_request_is_reproducible_whatever_its_batch_mates() -> None:
    step_logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(2))

    def run(seed: int, batch_size: int, row: int) -> list[int]:
        request = make_request("seeded", seed=seed, temperature=1.0)
        others = [make_request(f"o{i}", temperature=0.8) for i in range(batch_size - 1)]
        tokens = []
        for step in range(6):  # the generator lives on the request across steps
            batch = others[:row] + [request] + others[row:]
            logits = torch.randn(batch_size, VOCAB)
            logits[row] = step_logits[step]
            tokens.append(sample(logits, batch)[0][row])
        return tokens

    alone = run(seed=7, batch_size=1, row=0)
    assert run(seed=7, batch_size=5, row=3) == alone
    assert run(seed=7, batch_size=3, row=0) == alone
    assert run(seed=8, batch_size=1, row=0) != alone


def test_random_sampling_follows_the_distribution() -> None:
    torch.manual_seed(0)
    logits, requests = repeated_rows(8000)
    tokens, _ = sample(logits, requests, vocab_size=4)
    frequencies = torch.bincount(torch.tensor(tokens), minlength=4).float() / len(tokens)
    assert torch.allclose(frequencies, torch.tensor(PROBS), atol=0.02)


def test_temperature_sharpens_the_distribution() -> None:
    torch.manual_seed(0)
    logits, requests = repeated_rows(4000, temperature=0.25)
    tokens, _ = sample(logits, requests, vocab_size=4)
    share_of_top = tokens.count(0) / len(tokens)
    expected = 0.5**4 / sum(p**4 for p in PROBS)  # p^(1/T), renormalized
    assert share_of_top == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        ({"top_k": 2}, {0, 1}),
        ({"top_k": 3}, {0, 1, 2}),
        ({"top_p": 0.75}, {0, 1}),  # 0.5 + 0.3 is the smallest set reaching 0.75
        ({"top_p": 0.9}, {0, 1, 2}),
        ({"min_p": 0.2}, {0, 1, 2}),  # 0.05 < 0.2 * 0.5
        ({"min_p": 0.5}, {0, 1}),
        ({"top_k": 3, "min_p": 0.5}, {0, 1}),
    ],
)
def test_masks_keep_exactly_the_allowed_tokens(params: dict, allowed: set[int]) -> None:
    torch.manual_seed(0)
    logits, requests = repeated_rows(3000, **params)
    tokens, _ = sample(logits, requests, vocab_size=4)
    assert set(tokens) == allowed


def test_masks_apply_per_row() -> None:
    torch.manual_seed(0)
    logits = torch.tensor(PROBS).log().expand(2000, -1).contiguous()
    requests = [make_request(str(i), [0], top_k=1 + i % 2 * 3) for i in range(2000)]
    tokens, _ = sample(logits, requests, vocab_size=4)
    assert set(tokens[0::2]) == {0}
    assert set(tokens[1::2]) == {0, 1, 2, 3}


def test_penalties_match_a_hand_computed_example() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    penalties = Penalties(
        repetition=torch.tensor([2.0]),
        presence=torch.tensor([0.25]),
        frequency=torch.tensor([0.5]),
        output_counts=torch.tensor([[0.0, 1.0, 0.0, 2.0]]),
        seen_mask=torch.tensor([[True, True, False, True]]),
    )
    # token 0 (prompt only): 2 / 2; token 1: -1 * 2 - 0.5 * 1 - 0.25; token 2 untouched;
    # token 3: 3 / 2 - 0.5 * 2 - 0.25
    expected = torch.tensor([[1.0, -2.75, 0.5, 0.25]])
    assert torch.allclose(apply_penalties(logits, penalties), expected)


def test_penalty_metadata_counts_prompt_and_output_tokens() -> None:
    request = make_request(
        prompt=[0], repetition_penalty=2.0, presence_penalty=0.25, frequency_penalty=0.5
    )
    for token_id in (1, 3, 3):
        request.append_output_token(token_id)
    metadata = SamplingMetadata.from_requests([request], 4, "cpu")
    assert metadata.penalties.output_counts.tolist() == [[0.0, 1.0, 0.0, 2.0]]
    assert metadata.penalties.seen_mask.tolist() == [[True, True, False, True]]
    tokens, _ = sample(torch.tensor([[2.0, -1.0, 0.5, 3.0]]), [request], vocab_size=4)
    assert tokens == [0]  # greedy after penalties: 1.0 beats 0.5 and 0.25


def test_presence_and_frequency_ignore_prompt_tokens() -> None:
    request = make_request(prompt=[3, 3, 3], presence_penalty=2.0, frequency_penalty=2.0)
    metadata = SamplingMetadata.from_requests([request], 4, "cpu")
    assert metadata.penalties.output_counts.sum().item() == 0
    request = make_request(prompt=[3, 3, 3], temperature=0.0, presence_penalty=2.0)
    assert sample(torch.tensor([[0.0, 0.0, 1.0, 2.5]]), [request], vocab_size=4)[0] == [3]
    request.append_output_token(3)  # now in the output: 2.5 - 2.0 < 1.0
    assert sample(torch.tensor([[0.0, 0.0, 1.0, 2.5]]), [request], vocab_size=4)[0] == [2]


def test_min_tokens_blocks_eos_and_stop_ids_until_reached() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS] = 10.0
    logits[0, 7] = 9.0
    logits[0, 5] = 8.0
    request = make_request(min_tokens=2, temperature=0.0, stop_token_ids=[7])
    assert sample(logits, [request])[0] == [5]
    request.append_output_token(5)
    assert sample(logits, [request])[0] == [5]
    request.append_output_token(5)
    assert sample(logits, [request])[0] == [EOS]


def test_min_tokens_also_applies_to_random_rows() -> None:
    logits = torch.zeros(500, VOCAB)
    logits[:, EOS] = 5.0
    requests = [make_request(str(i), min_tokens=1, temperature=1.0) for i in range(500)]
    tokens, _ = sample(logits, requests)
    assert EOS not in tokens


def test_begin_suppress_ids_are_banned_at_the_first_output_token_only() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 9] = 10.0
    logits[:, EOS] = 9.0
    logits[:, 5] = 8.0
    banned = make_request("a", temperature=0.0, begin_suppress_token_ids=[9, EOS])
    plain = make_request("b", temperature=0.0)
    assert sample(logits, [banned, plain])[0] == [5, 9]  # the batch-mate is not affected
    banned.append_output_token(5)
    assert sample(logits[:1], [banned])[0] == [9]


def test_allowed_token_ids_restrict_their_row_only() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 9] = 10.0
    logits[:, 4] = 3.0
    logits[:, 6] = 2.0
    restricted = make_request("a", temperature=0.0, allowed_token_ids=[6, 4, VOCAB + 5])
    tokens, _ = sample(logits, [restricted, make_request("b", temperature=0.0)])
    assert tokens == [4, 9]
    random_rows = [make_request(str(i), allowed_token_ids=[6]) for i in range(50)]
    assert set(sample(torch.zeros(50, VOCAB), random_rows)[0]) == {6}


def test_logprobs_are_raw_sorted_and_ranked() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, 1.0]])
    raw = logits.log_softmax(dim=-1)
    requests = [
        make_request("a", temperature=0.0, logprobs=3, repetition_penalty=2.0),
        make_request("b", temperature=0.0),
    ]
    requests[0].append_output_token(1)  # the penalty lowers token 1 but not its raw logprob
    tokens, logprobs = sample(logits, requests, vocab_size=4)
    assert tokens == [2, 2]
    entry = logprobs[0]
    assert entry.token_id == 2 and entry.rank == 2
    assert entry.logprob == pytest.approx(raw[0, 2].item())
    assert entry.top_token_ids == (1, 2, 0)
    assert list(entry.top_logprobs) == sorted(entry.top_logprobs, reverse=True)
    assert entry.top_logprobs == pytest.approx(tuple(raw[0, [1, 2, 0]].tolist()))
    assert math.fsum(math.exp(x) for x in raw[0].tolist()) == pytest.approx(1.0)
    assert logprobs[1] is None


def test_zero_logprobs_still_returns_the_sampled_tokens_own() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    _, logprobs = sample(logits, [make_request(temperature=0.0, logprobs=0)], vocab_size=4)
    entry = logprobs[0]
    assert entry.token_id == 1 and entry.rank == 1
    assert entry.top_token_ids == () and entry.top_logprobs == ()
    assert entry.logprob == pytest.approx(logits.log_softmax(-1)[0, 1].item())
