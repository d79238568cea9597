from __future__ import annotations

import pytest

from lm_service.engine.request import FinishReason, Request, RequestStatus
from lm_service.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from protos.errors import InvalidRequest, Overloaded
from protos.lm_messages import MultiModalSpan
from protos.sampling_params import SamplingParams

EOS = 2


class FakeModel:
    """A deterministic "model" over a simulated paged KV cache.

    Each step writes a key (token id, media hash) for every scheduled position into the slot
    its block table names; a sampling request's next token is a function of the keys read back
    through its block table. A wrong block table, a block shared by mistake or a stale prefix
    hit fails the read-back assertion or changes the tokens.
    """

    def __init__(self, config: SchedulerConfig, eos_after: dict[str, int] | None = None):
        self.block_size = config.block_size
        self.kv: list[tuple[int, str | None] | None] = [None] * config.cache_capacity_tokens
        self.eos_after = eos_after or {}  # request id -> emit EOS once it has this many outputs

    def slot(self, request: Request, position: int) -> int:
        block_id = request.block_ids[position // self.block_size]
        return block_id * self.block_size + position % self.block_size

    def step(self, output: SchedulerOutput) -> dict[str, tuple[int, None]]:
        for item in output.scheduled:
            start = item.num_computed_tokens
            for position in range(start, start + item.num_new_tokens):
                self.kv[self.slot(item.request, position)] = expected_key(item.request, position)
        sampled = {}
        for item in output.scheduled:
            if item.will_sample:
                sampled[item.request.request_id] = (self.next_token(item.request), None)
        return sampled

    def next_token(self, request: Request) -> int:
        keys = [self.kv[self.slot(request, p)] for p in range(request.num_tokens)]
        assert keys == [expected_key(request, p) for p in range(request.num_tokens)]
        if request.num_output_tokens == self.eos_after.get(request.request_id, -1):
            return EOS
        return next_token(keys)


def expected_key(request: Request, position: int) -> tuple[int, str | None]:
    media = [s.content_hash for s in request.mm_spans if s.offset <= position < s.end]
    return request.all_token_ids[position], (media[0] if media else None)


def next_token(keys: list) -> int:
    """token = f(all previous keys); never EOS."""
    total = 0
    for position, (token_id, media) in enumerate(keys):
        total += (position + 1) * token_id + sum(map(ord, media or ""))
    return 10 + total % 50


def make_config(**kwargs: int | bool) -> SchedulerConfig:
    defaults = dict(
        max_num_batched_tokens=64, max_num_seqs=8, block_size=4, num_blocks=64, max_model_len=256
    )
    return SchedulerConfig(**{**defaults, **kwargs})


def make_request(request_id: str, prompt: list[int], max_tokens: int = 4, **kwargs) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return Request(request_id, prompt, params, eos_token_id=EOS, **kwargs)


def run_until_done(
    scheduler: Scheduler, model: FakeModel, max_steps: int = 500
) -> list[SchedulerOutput]:
    outputs: list[SchedulerOutput] = []
    config = scheduler.config
    while scheduler.has_unfinished():
        out = scheduler.schedule()
        assert out.num_scheduled_tokens <= config.max_num_batched_tokens
        assert len(out.scheduled) <= config.max_num_seqs
        scheduler.update_from_output(out, model.step(out))
        outputs.append(out)
        assert len(outputs) < max_steps, "the scheduler made no progress"
    return outputs


def generate(config: SchedulerConfig, requests: list[Request]) -> dict[str, list[int]]:
    scheduler = Scheduler(config)
    for request in requests:
        scheduler.add_request(request)
    run_until_done(scheduler, FakeModel(config))
    assert scheduler.block_pool.num_free_blocks == config.num_blocks
    return {r.request_id: r.output_token_ids for r in requests}


def prompt(length: int, start: int = 100) -> list[int]:
    return list(range(start, start + length))


# ---- config and admission ----


def test_config_rejects_non_positive_limits() -> None:
    with pytest.raises(ValueError, match="max_num_seqs must be a positive integer, got 0"):
        make_config(max_num_seqs=0)


def test_prompt_longer_than_max_model_len_is_overloaded() -> None:
    scheduler = Scheduler(make_config(max_model_len=16))
    with pytest.raises(Overloaded, match="prompt of 17 tokens is longer than max_model_len=16"):
        scheduler.add_request(make_request("a", prompt(17)))


def test_prompt_the_cache_can_never_hold_is_overloaded() -> None:
    scheduler = Scheduler(make_config(block_size=16, num_blocks=256, max_model_len=8192))
    with pytest.raises(Overloaded) as excinfo:
        scheduler.add_request(make_request("a", prompt(5000)))
    assert str(excinfo.value) == (
        "prompt of 5000 tokens needs 313 KV blocks of 16 tokens; the cache has 256 (4096 tokens)"
    )
    assert not scheduler.has_unfinished()


def test_duplicate_request_id_is_invalid() -> None:
    scheduler = Scheduler(make_config())
    scheduler.add_request(make_request("a", prompt(3)))
    with pytest.raises(InvalidRequest, match="already in use"):
        scheduler.add_request(make_request("a", prompt(3)))


# ---- one token budget ----


def test_chunked_prefill_over_several_steps_then_decode() -> None:
    config = make_config(max_num_batched_tokens=8)
    scheduler = Scheduler(config)
    request = make_request("a", prompt(20), max_tokens=3)
    scheduler.add_request(request)
    outputs = run_until_done(scheduler, FakeModel(config))
    steps = [(o.scheduled[0].num_new_tokens, o.scheduled[0].will_sample) for o in outputs]
    assert steps == [(8, False), (8, False), (4, True), (1, True), (1, True)]
    assert outputs[1].scheduled[0].new_token_ids == prompt(20)[8:16]
    assert request.num_output_tokens == 3
    assert request.status == RequestStatus.FINISHED_LENGTH
    assert request.finish_reason == FinishReason.LENGTH


def test_running_requests_go_first_and_waiting_ones_fill_the_budget() -> None:
    config = make_config(max_num_batched_tokens=8)
    scheduler = Scheduler(config)
    model = FakeModel(config)
    first, second = make_request("a", prompt(6)), make_request("b", prompt(10, 300))
    scheduler.add_request(first)
    scheduler.add_request(second)
    out = scheduler.schedule()
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 6), ("b", 2)]
    scheduler.update_from_output(out, model.step(out))
    assert first.num_output_tokens == 1 and second.num_output_tokens == 0
    out = scheduler.schedule()
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 1), ("b", 7)]
    assert [s.will_sample for s in out.scheduled] == [True, False]


def test_max_num_seqs_caps_running_requests() -> None:
    config = make_config(max_num_seqs=2)
    scheduler = Scheduler(config)
    for name in "abc":
        scheduler.add_request(make_request(name, prompt(4), max_tokens=2))
    out = scheduler.schedule()
    assert [s.request.request_id for s in out.scheduled] == ["a", "b"]
    assert scheduler.num_running == 2 and scheduler.num_waiting == 1
    outputs = [out]
    model = FakeModel(config)
    scheduler.update_from_output(out, model.step(out))
    outputs += run_until_done(scheduler, model)
    assert all(len(o.scheduled) <= 2 for o in outputs)


def test_waiting_requests_are_first_come_first_served() -> None:
    config = make_config(num_blocks=6, max_num_batched_tokens=64)
    scheduler = Scheduler(config)
    model = FakeModel(config)
    scheduler.add_request(make_request("running", prompt(12), max_tokens=8))  # 3 blocks
    out = scheduler.schedule()
    scheduler.update_from_output(out, model.step(out))
    scheduler.add_request(make_request("big", prompt(16, 500)))  # needs 4 blocks, 3 are free
    scheduler.add_request(make_request("small", prompt(2, 700)))  # would fit, must wait
    out = scheduler.schedule()
    assert [s.request.request_id for s in out.scheduled] == ["running"]
    assert [r.request_id for r in scheduler.waiting] == ["big", "small"]


# ---- preemption ----


def test_preempts_the_newest_and_recomputes_to_the_same_tokens() -> None:
    def requests() -> list[Request]:
        return [make_request(f"r{i}", prompt(5, 100 * i), max_tokens=12) for i in range(4)]

    roomy = make_config(num_blocks=64)
    expected = generate(roomy, requests())

    tight = make_config(num_blocks=9)  # 4 requests x up to 4 blocks do not fit
    scheduler = Scheduler(tight)
    batch = requests()
    for request in batch:
        scheduler.add_request(request)
    outputs = run_until_done(scheduler, FakeModel(tight))
    preempting = [o for o in outputs if o.preempted]
    assert preempting, "the cache was meant to run out"
    for out in preempting:
        victim_order = [int(r.request_id[1:]) for r in out.preempted]
        assert victim_order == sorted(victim_order, reverse=True)  # newest first
        scheduled = [int(s.request.request_id[1:]) for s in out.scheduled]
        assert all(s < min(victim_order) for s in scheduled)
    assert {r.request_id: r.output_token_ids for r in batch} == expected
    assert scheduler.stats.num_preemptions == sum(r.num_preemptions for r in batch) > 0
    assert scheduler.block_pool.num_free_blocks == tight.num_blocks


def test_preempted_request_keeps_its_output_and_recomputes_it() -> None:
    config = make_config(num_blocks=3, max_model_len=12, enable_prefix_caching=False)
    scheduler = Scheduler(config)
    model = FakeModel(config)
    first, second = make_request("a", prompt(4), 8), make_request("b", prompt(4, 200), 8)
    scheduler.add_request(first)
    scheduler.add_request(second)
    out = scheduler.schedule()  # both prefill, one block each
    scheduler.update_from_output(out, model.step(out))
    out = scheduler.schedule()  # "a" needs a 2nd block; "b" too: only one is free
    assert out.preempted == (second,)
    assert second.status == RequestStatus.PREEMPTED and second.num_computed_tokens == 0
    assert second.block_ids == [] and scheduler.waiting[0] is second
    kept = list(second.output_token_ids)
    assert len(kept) == 1
    scheduler.update_from_output(out, model.step(out))
    while second.status != RequestStatus.RUNNING:
        out = scheduler.schedule()
        scheduler.update_from_output(out, model.step(out))
    resumed = next(s for s in out.scheduled if s.request is second)
    assert resumed.num_computed_tokens == 0 and resumed.num_new_tokens == 5
    assert resumed.new_token_ids == prompt(4, 200) + kept  # the output is recomputed too
    run_until_done(scheduler, model)
    assert second.output_token_ids[:1] == kept
    assert second.num_output_tokens == 8 and first.num_output_tokens == 8


# ---- stop conditions and abort ----


def test_eos_stops_and_frees_blocks() -> None:
    config = make_config()
    scheduler = Scheduler(config)
    request = make_request("a", prompt(6), max_tokens=10)
    scheduler.add_request(request)
    finished_in: list[str] = []
    model = FakeModel(config, eos_after={"a": 3})
    while scheduler.has_unfinished():
        out = scheduler.schedule()
        finished_in += [r.request_id for r in scheduler.update_from_output(out, model.step(out))]
    assert finished_in == ["a"]
    assert request.output_token_ids[-1] == EOS and request.num_output_tokens == 4
    assert request.finish_reason == FinishReason.STOP
    assert scheduler.block_pool.num_free_blocks == config.num_blocks
    assert scheduler.schedule().finished_ids == ("a",)


def test_sequence_stops_at_max_model_len() -> None:
    config = make_config(max_model_len=10)
    request = Request("a", prompt(7), SamplingParams(max_tokens=None), eos_token_id=EOS)
    generate(config, [request])
    assert request.num_tokens == 10 and request.finish_reason == FinishReason.LENGTH


def test_sequence_also_stops_at_the_cache_capacity() -> None:
    config = make_config(num_blocks=3, max_model_len=1000)
    request = Request("a", prompt(7), SamplingParams(max_tokens=None), eos_token_id=EOS)
    generate(config, [request])
    assert request.num_tokens == 12 and request.finish_reason == FinishReason.LENGTH


def test_abort_frees_blocks_at_once() -> None:
    config = make_config()
    scheduler = Scheduler(config)
    model = FakeModel(config)
    running, waiting = make_request("a", prompt(9)), make_request("b", prompt(3))
    scheduler.add_request(running)
    out = scheduler.schedule()
    scheduler.update_from_output(out, model.step(out))
    scheduler.add_request(waiting)
    assert scheduler.block_pool.num_free_blocks == config.num_blocks - 3
    assert scheduler.abort("a") is running
    assert scheduler.block_pool.num_free_blocks == config.num_blocks
    assert running.status == RequestStatus.FINISHED_ABORTED
    assert running.finish_reason == FinishReason.ABORT
    assert scheduler.abort("b") is waiting and not scheduler.has_unfinished()
    assert scheduler.abort("a") is None and scheduler.abort("unknown") is None
    assert scheduler.schedule().finished_ids == ("a", "b")


def test_abort_during_a_step_is_ignored_by_the_update() -> None:
    config = make_config()
    scheduler = Scheduler(config)
    request = make_request("a", prompt(5))
    scheduler.add_request(request)
    out = scheduler.schedule()
    sampled = FakeModel(config).step(out)
    scheduler.abort("a")
    assert scheduler.update_from_output(out.scheduled, sampled) == []
    assert request.output_token_ids == [] and request.block_ids == []


# ---- prefix cache ----


def test_repeated_prompt_hits_the_prefix_cache_and_gives_the_same_tokens() -> None:
    config = make_config()
    scheduler = Scheduler(config)
    model = FakeModel(config)
    first = make_request("a", prompt(10))
    scheduler.add_request(first)
    run_until_done(scheduler, model)
    second = make_request("b", prompt(10))
    scheduler.add_request(second)
    out = scheduler.schedule()
    assert out.scheduled[0].num_new_tokens == 2  # 8 of 10 prompt tokens served from cache
    scheduler.update_from_output(out, model.step(out))
    run_until_done(scheduler, model)
    assert first.num_cached_tokens == 0 and second.num_cached_tokens == 8
    assert second.output_token_ids == first.output_token_ids
    assert scheduler.stats.prefix_cache_hit_tokens == 8
    assert scheduler.stats.prefix_cache_hit_rate == pytest.approx(8 / 20)


def test_running_requests_share_prefix_blocks() -> None:
    config = make_config()
    scheduler = Scheduler(config)
    model = FakeModel(config)
    shared = prompt(8)
    first = make_request("a", shared + [1, 1], max_tokens=6)
    scheduler.add_request(first)
    out = scheduler.schedule()
    scheduler.update_from_output(out, model.step(out))
    second = make_request("b", shared + [3], max_tokens=6)
    scheduler.add_request(second)
    out = scheduler.schedule()
    scheduler.update_from_output(out, model.step(out))
    assert second.num_cached_tokens == 8
    assert second.block_ids[:2] == first.block_ids[:2]
    assert [scheduler.block_pool.blocks[b].ref_count for b in first.block_ids[:2]] == [2, 2]
    run_until_done(scheduler, model)
    alone = generate(config, [make_request("b", shared + [3], max_tokens=6)])
    assert second.output_token_ids == alone["b"]


def test_images_with_the_same_placeholders_do_not_share_kv() -> None:
    config = make_config()
    scheduler = Scheduler(config)
    model = FakeModel(config)
    placeholders = [5] + [0] * 8 + [6, 7]

    def with_image(request_id: str, content_hash: str) -> Request:
        return make_request(
            request_id, placeholders, mm_spans=(MultiModalSpan(1, 8, content_hash),)
        )

    cat, dog = with_image("cat", "cat-hash"), with_image("dog", "dog-hash")
    for request in (cat, dog):
        scheduler.add_request(request)
        run_until_done(scheduler, model)
    assert dog.num_cached_tokens == 0
    assert dog.output_token_ids != cat.output_token_ids  # the fake model sees the media hash
    again = with_image("cat-again", "cat-hash")
    scheduler.add_request(again)
    run_until_done(scheduler, model)
    assert again.num_cached_tokens == 8 and again.output_token_ids == cat.output_token_ids


def test_batch_composition_does_not_change_tokens() -> None:
    config = make_config(max_num_batched_tokens=16, num_blocks=40)
    many = [make_request(f"r{i}", prompt(3 + 2 * i, 50 * i), max_tokens=6) for i in range(8)]
    together = generate(config, many)
    for i in (0, 5):
        alone = generate(config, [make_request(f"r{i}", prompt(3 + 2 * i, 50 * i), max_tokens=6)])
        assert alone[f"r{i}"] == together[f"r{i}"]


# ---- the request's own stop rule ----


@pytest.mark.parametrize(
    ("params", "outputs", "reason"),
    [
        (SamplingParams(), [5, EOS], FinishReason.STOP),
        (SamplingParams(ignore_eos=True), [5, EOS], None),
        (SamplingParams(min_tokens=3), [5, EOS], None),
        (SamplingParams(min_tokens=2), [5, EOS], FinishReason.STOP),
        (SamplingParams(stop_token_ids=(9,)), [9], FinishReason.STOP),
        (SamplingParams(stop_token_ids=(9,), min_tokens=2), [9], None),
        (SamplingParams(max_tokens=2), [5, 6], FinishReason.LENGTH),
        (SamplingParams(max_tokens=3), [5, 6], None),
    ],
)
def test_check_stop(
    params: SamplingParams, outputs: list[int], reason: FinishReason | None
) -> None:
    request = Request("a", [1, 2, 3], params, eos_token_id=EOS)
    for token_id in outputs:
        request.append_output_token(token_id)
    assert request.check_stop() == reason
    assert request.all_token_ids == [1, 2, 3, *outputs]


def test_max_model_len_ends_a_request_even_before_min_tokens() -> None:
    request = Request("a", [1, 2, 3], SamplingParams(min_tokens=10, max_tokens=20))
    request.append_output_token(4)
    assert request.check_stop(max_model_len=4) == FinishReason.LENGTH


def test_request_rejects_bad_media_spans() -> None:
    with pytest.raises(InvalidRequest, match="outside the prompt of 4 tokens"):
        Request("a", [1, 2, 3, 4], mm_spans=(MultiModalSpan(2, 3, "h"),))
    with pytest.raises(InvalidRequest, match="at least one token"):
        Request("a", [])
