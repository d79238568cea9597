"""Stop strings over a stream of text deltas."""

from __future__ import annotations

import random

import pytest

from gateway.pipeline.stop import StopChecker
from protos.errors import InvalidRequest


def _run(
    stops: list[str], deltas: list[str], include: bool = False
) -> tuple[list[tuple[str, bool]], str, str | None]:
    checker = StopChecker(stops, include_stop_str_in_output=include)
    results = [tuple(checker.process(delta)) for delta in deltas]
    return results, checker.flush(), checker.matched_stop  # type: ignore[return-value]


def _text(stops: list[str], deltas: list[str], include: bool = False) -> str:
    results, tail, _ = _run(stops, deltas, include)
    return "".join(text for text, _ in results) + tail


def test_cut_before_the_stop_string() -> None:
    results, tail, matched = _run(["STOP"], ["Hello STOP world"])
    assert results == [("Hello ", True)]
    assert tail == "" and matched == "STOP"


def test_include_stop_str_in_output() -> None:
    assert _text(["STOP"], ["Hello STOP world"], include=True) == "Hello STOP"
    assert _text(["STOP"], ["Hel", "lo ST", "OP", " world"], include=True) == "Hello STOP"


def test_stop_spanning_deltas_is_held_then_cut() -> None:
    results, tail, matched = _run(["STOP"], ["Hel", "lo S", "TO", "P more"])
    assert results == [("Hel", False), ("lo ", False), ("", False), ("", True)]
    assert tail == "" and matched == "STOP"


def test_held_text_is_released_when_the_stop_does_not_follow() -> None:
    results, tail, matched = _run(["STOP"], ["Hello S", "TX", "!"])
    assert results == [("Hello ", False), ("STX", False), ("!", False)]
    assert tail == "" and matched is None


def test_no_false_holdback() -> None:
    """Only a tail that can start a stop string waits; everything else goes out at once."""
    checker = StopChecker(["</answer>", "\n\nUser:"])
    assert checker.process("The answer is 42") == ("The answer is 42", False)
    assert checker.process(" <") == (" ", False)
    assert checker.process("b>") == ("<b>", False)
    assert checker.process("\n") == ("", False)
    assert checker.process("Next") == ("\nNext", False)
    assert checker.flush() == ""


def test_flush_returns_an_unfinished_candidate() -> None:
    results, tail, matched = _run(["STOP"], ["Hello ST"])
    assert results == [("Hello ", False)]
    assert tail == "ST" and matched is None


def test_earliest_stop_wins() -> None:
    assert _text(["world", "lo"], ["Hello world"]) == "Hel"
    assert _text(["world", "lo"], ["Hel", "lo world"]) == "Hel"
    # Same position: the shorter one is complete first.
    assert _text(["abc", "ab"], ["xxabc"], include=True) == "xxab"
    assert _text(["abc", "ab"], ["xxa", "b", "c"], include=True) == "xxab"


def test_earlier_candidate_beats_a_later_complete_match() -> None:
    """'bc' is complete inside 'abc', but 'abcd' may still start earlier: wait for it."""
    results, tail, matched = _run(["abcd", "bc"], ["xab", "c", "d"])
    assert results == [("x", False), ("", False), ("", True)]
    assert (tail, matched) == ("", "abcd")
    results, tail, matched = _run(["abcd", "bc"], ["xab", "c", "e"])
    assert results == [("x", False), ("", False), ("a", True)]
    assert matched == "bc"
    results, tail, matched = _run(["abcd", "bc"], ["xab", "c"])  # the stream ends while waiting
    assert (tail, matched) == ("a", "bc")


def test_after_stop_nothing_more() -> None:
    checker = StopChecker(["."])
    assert checker.process("One. Two.") == ("One", True)
    assert checker.process("Three") == ("", True)
    assert checker.flush() == "" and checker.is_stopped


def test_no_stop_strings_pass_through() -> None:
    assert _run([], ["a", "b"]) == ([("a", False), ("b", False)], "", None)


def test_empty_stop_string_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must not be empty"):
        StopChecker(["ok", ""])


def _reference(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """One search over the whole text: earliest start, then the shortest."""
    found = [(text.find(s), len(s), s) for s in stops if s in text]
    if not found:
        return text, None
    index, length, stop = min(found)
    return text[: index + (length if include else 0)], stop


@pytest.mark.parametrize("include", [False, True])
def test_any_split_gives_the_whole_text_answer(include: bool) -> None:
    rng = random.Random(2024)
    for _ in range(500):
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 24)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(3)]
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        deltas = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        results, tail, matched = _run(stops, deltas, include)
        expected_text, expected_stop = _reference(text, stops, include)
        assert "".join(t for t, _ in results) + tail == expected_text, (text, stops, deltas)
        assert matched == expected_stop
        assert any(stopped for _, stopped in results) <= (expected_stop is not None)
