"""pytest plugin: which tests prove which seed rows, and how they came out.

Loaded only by `make support-table` (`python -m gateway.tools.support_table`), as
`pytest -p tests.seed_rows --seed-rows-out=FILE`: every collected test marked
`@pytest.mark.seed_row(architecture, task, impl=None)` is written to FILE (JSON) with its
outcome (passed / failed / skipped and why; "collected" under --collect-only).

`impl` says which implementation the test ran: "native", "transformers" or "generic tower".
Left out, it is what `model_impl="auto"` picks: native where the LM registry has the
architecture, the generic tower for a multimodal row of the seed, else transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

MARKER = "seed_row"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed-rows-out",
        default=None,
        help="write the seed rows of the collected tests and their outcomes to this JSON file",
    )


def pytest_configure(config: pytest.Config) -> None:
    out = config.getoption("--seed-rows-out")
    if out:
        config.pluginmanager.register(SeedRowRecorder(Path(out)), "seed_row_recorder")


def default_impl(architecture: str, task: str) -> str:
    from gateway.rules.spec_table import SPECS
    from lm_service.models.registry import NATIVE_ARCHITECTURES

    if task == "generate" and architecture in NATIVE_ARCHITECTURES:
        return "native"
    if task not in ("generate", "embed"):  # pooling heads and Whisper run dense HF models
        return "transformers"
    multimodal = any(arch == architecture and spec != "T" for (arch, _), spec in SPECS.items())
    return "generic tower" if multimodal else "transformers"


def row_of(item: pytest.Item, mark: pytest.Mark) -> dict[str, Any]:
    if len(mark.args) != 2:
        raise pytest.UsageError(
            f"{item.nodeid}: seed_row takes (architecture, task), e.g. "
            '@pytest.mark.seed_row("LlavaNextForConditionalGeneration", "generate")'
        )
    architecture, task = mark.args
    impl = mark.kwargs.get("impl") or default_impl(architecture, task)
    return {"test": item.nodeid, "architecture": architecture, "task": task, "impl": impl}


class SeedRowRecorder:
    """Collects the marked tests, then their outcomes, and writes them at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self.outcomes: dict[str, tuple[str, str | None]] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.rows.extend(row_of(item, mark) for mark in item.iter_markers(MARKER))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.outcomes[report.nodeid] = ("failed", f"{report.when} failed")
        elif report.skipped and report.nodeid not in self.outcomes:
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.outcomes[report.nodeid] = ("skipped", reason.removeprefix("Skipped: "))
        elif report.when == "call" and report.passed:
            self.outcomes.setdefault(report.nodeid, ("passed", None))

    def pytest_sessionfinish(self) -> None:
        rows = []
        for row in self.rows:
            outcome, reason = self.outcomes.get(row["test"], ("collected", None))
            rows.append({**row, "outcome": outcome, "reason": reason})
        rows.sort(key=lambda r: (r["task"], r["architecture"], r["test"]))
        self.out.write_text(json.dumps(rows, indent=1) + "\n")
