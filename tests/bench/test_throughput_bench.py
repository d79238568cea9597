"""bench/throughput.py's timing: both sides take turns, the best time of each is kept."""

from __future__ import annotations

import bench.throughput
from bench.throughput import best_decode_ms, best_throughput


def test_batch1_samples_take_turns_and_keep_each_sides_least_time(monkeypatch):
    calls: list[tuple[str, int]] = []

    def recorder(name: str):
        def generate(prompt_len: int, tokens: int) -> None:
            calls.append((name, tokens))

        return generate

    best = best_decode_ms({"ours": recorder("ours"), "hf": recorder("hf")}, 8, 5, repeats=3)
    assert set(best) == {"ours", "hf"}
    sides = [name for name, tokens in calls if tokens == 5]  # one timed long run per sample
    assert sides == ["ours", "hf"] * 3
    assert len(calls) == 3 * 2 * 3  # warm-up, 1 token, 5 tokens

    samples = iter([40.0, 50.0, 38.0, 55.0, 42.0, 47.0])  # ours, hf, ours, hf, ours, hf
    monkeypatch.setattr(bench.throughput, "decode_ms_per_token", lambda *_: next(samples))
    best = best_decode_ms({"ours": recorder("ours"), "hf": recorder("hf")}, 8, 5, repeats=3)
    assert best == {"ours": 38.0, "hf": 47.0}


def test_throughput_turns_alternate_and_keep_each_sides_best(capsys):
    order: list[str] = []
    ours_times, hf_times = iter([26.8, 21.9]), iter([74.0, 76.0])

    def ours() -> float:
        order.append("ours")
        return next(ours_times)

    def hf() -> float:
        order.append("hf")
        return next(hf_times)

    ours_s, hf_s, samples = best_throughput(ours, hf, turns=2)
    assert order == ["ours", "hf", "ours", "hf"]
    assert (ours_s, hf_s) == (21.9, 74.0)
    assert samples == [(26.8, 74.0), (21.9, 76.0)]
    assert "turn 2: meshserve 21.9s, HF 76.0s" in capsys.readouterr().out
