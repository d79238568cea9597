"""The README's support table is generated from the tests (`make support-table`): it must
match the committed results, the marked tests must be the ones those results name, and every
row no test proves must say why."""

from __future__ import annotations

import pytest

from gateway.tools.support_table import cli
from gateway.tools.support_table.render import (
    NOT_IN_TRANSFORMERS,
    markdown,
    missing_reasons,
    replace_section,
    statuses,
)
from gateway.tools.support_table.seed import SeedRow, find_seed
from tests.seed_rows import default_impl

pytestmark = pytest.mark.skipif(
    find_seed(cli.ROOT) is None, reason="the seed supported_models.zh.md is not in this checkout"
)


def test_every_table_of_the_seed_is_read() -> None:
    rows = cli.seed_rows()
    by_task: dict[tuple[str, str], int] = {}
    for row in rows:
        by_task[row.section, row.task] = by_task.get((row.section, row.task), 0) + 1
    assert by_task == {
        ("text", "generate"): 61,
        ("text", "embed"): 7,
        ("text", "reward"): 4,
        ("text", "classify"): 2,
        ("text", "score"): 3,
        ("multimodal", "generate"): 29,
        ("multimodal", "embed"): 3,
        ("multimodal", "transcription"): 1,
    }
    cohere = next(row for row in rows if row.cell.startswith("CohereForCausalLM"))
    assert cohere.architectures == ("CohereForCausalLM", "Cohere2ForCausalLM")


def test_the_committed_table_is_fresh() -> None:
    assert cli.problems() == []


def test_the_marked_tests_are_the_ones_in_the_results() -> None:
    """A new @pytest.mark.seed_row test (any file) makes this fail until the table is rerun."""
    assert cli.problems(cli.collect(collect_only=True)) == []


def _results(*tests: dict) -> dict:
    return {"transformers": "9.9", "in_transformers": ["ARow", "BRow", "CRow"], "tests": tests}


def _entry(architecture: str, outcome: str, reason: str | None = None) -> dict:
    return {
        "test": f"tests/test_x.py::test_{architecture}",
        "architecture": architecture,
        "task": "generate",
        "impl": "transformers",
        "outcome": outcome,
        "reason": reason,
    }


def test_rows_show_their_tests_or_why_not() -> None:
    rows = [SeedRow("text", "generate", name, (name,)) for name in ("ARow", "BRow", "CRow", "ZRow")]
    results = _results(_entry("ARow", "passed"), _entry("BRow", "skipped", "needs torchvision"))
    table = statuses(rows, results)
    assert [s.supported for s in table] == [True, False, False, False]
    assert table[0].impls == ("transformers",) and table[0].tests == ("tests/test_x.py::test_ARow",)
    assert table[1].reason == "skipped: needs torchvision"
    assert table[3].reason == NOT_IN_TRANSFORMERS.format(version="9.9")
    assert missing_reasons(table) == ["CRow (generate)"]  # in transformers, no test, no reason
    section = markdown(table, results)
    assert "- `generate`: 1 of 4 rows (text 1/4)" in section
    assert "**no reason given**" in section
    readme = replace_section("# x\n", section)
    assert replace_section(readme, section) == readme


@pytest.mark.parametrize(
    ("architecture", "task", "impl"),
    [
        ("LlamaForCausalLM", "generate", "native"),
        ("LlavaForConditionalGeneration", "generate", "native"),
        ("LlavaNextForConditionalGeneration", "generate", "generic tower"),
        ("MambaForCausalLM", "generate", "transformers"),
        ("BertModel", "embed", "transformers"),
        ("Whisper", "transcription", "transformers"),
    ],
)
def test_the_default_implementation_is_what_auto_picks(
    architecture: str, task: str, impl: str
) -> None:
    assert default_impl(architecture, task) == impl


def test_a_new_marked_test_makes_the_table_stale() -> None:
    collected = [dict(entry) for entry in cli.load_results()["tests"]]
    collected.append(
        {
            "test": "tests/gateway/test_x.py::test_llava_next",
            "architecture": "LlavaNextForConditionalGeneration",
            "task": "generate",
            "impl": "generic tower",
        }
    )
    found = cli.problems(collected)
    assert any("test_llava_next" in line and "make support-table" in line for line in found)
    assert any("results.json names" in line for line in cli.problems(collected[1:-1]))
