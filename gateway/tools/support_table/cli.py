"""The commands of `python -m gateway.tools.support_table run | render | check`; see the package
docstring."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.tools.support_table.render import (
    current_section,
    markdown,
    missing_reasons,
    replace_section,
    statuses,
)
from gateway.tools.support_table.seed import SeedRow, find_seed, parse_seed, seed_candidates

ROOT = Path(__file__).resolve().parents[3]
RESULTS = Path(__file__).with_name("results.json")
README = ROOT / "README.md"
PLUGIN = "tests.seed_rows"


def seed_rows(root: Path = ROOT) -> list[SeedRow]:
    path = find_seed(root)
    if path is None:
        places = ", ".join(str(p) for p in seed_candidates(root))
        raise SystemExit(f"the seed is not in any of {places}; set MESHSERVE_SEED_DIR")
    return parse_seed(path.read_text(encoding="utf-8"))


def marked_test_files(root: Path = ROOT) -> list[str]:
    """Test files that mention the marker (the only ones pytest needs to collect)."""
    files = sorted((root / "tests").rglob("test_*.py"))
    return [str(f.relative_to(root)) for f in files if "seed_row" in f.read_text()]


def collect(collect_only: bool, root: Path = ROOT) -> list[dict[str, Any]]:
    """Runs (or only collects) the marked tests with the recording plugin."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "pytest", "-q", "-p", PLUGIN, f"--seed-rows-out={out}"]
        command += ["-m", "seed_row", "-p", "no:cacheprovider"]
        command += ["--collect-only"] if collect_only else []
        done = subprocess.run([*command, *marked_test_files(root)], cwd=root, check=False)
        if not out.is_file():
            raise SystemExit(f"pytest wrote no results (exit {done.returncode})")
        return json.loads(out.read_text())


def in_transformers(rows: Sequence[SeedRow]) -> list[str]:
    """The seed's architectures that transformers has a class for (case aside: MPT -> Mpt)."""
    import transformers

    names = {name.lower() for name in dir(transformers)}
    return sorted({a for row in rows for a in row.names if a.lower() in names})


def run() -> None:
    import transformers

    rows = seed_rows()
    results = {
        "transformers": transformers.__version__,
        "in_transformers": in_transformers(rows),
        "tests": collect(collect_only=False),
    }
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    render()


def render() -> None:
    results = load_results()
    table = statuses(seed_rows(), results)
    README.write_text(replace_section(README.read_text(), markdown(table, results)))
    for line in missing_reasons(table):
        print(f"no test and no reason: {line} (add one to reasons.py)", file=sys.stderr)


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text())


def problems(collected: list[dict[str, Any]] | None = None) -> list[str]:
    """What makes the committed table stale; empty when it is fresh."""
    results = load_results()
    table = statuses(seed_rows(), results)
    found = [f"no test and no reason: {line}" for line in missing_reasons(table)]
    if current_section(README.read_text()) != markdown(table, results):
        found.append(
            "README.md's support table differs from results.json: run `make support-table`"
        )
    if collected is not None:
        key = lambda e: (e["test"], e["architecture"], e["task"], e["impl"])  # noqa: E731
        now, then = {key(e) for e in collected}, {key(e) for e in results["tests"]}
        for entry in sorted(now - then):
            found.append(f"marked test not in results.json (run `make support-table`): {entry}")
        for entry in sorted(then - now):
            found.append(f"results.json names a test that is gone or changed: {entry}")
    known = {name for row in seed_rows() for name in row.names}
    for entry in results["tests"]:
        if entry["architecture"] not in known:
            found.append(f"{entry['test']} marks {entry['architecture']!r}, not a seed row")
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The README's support table from the tests.")
    parser.add_argument("command", choices=("run", "render", "check"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run()
    elif args.command == "render":
        render()
    else:
        found = problems(collect(collect_only=True))
        for line in found:
            print(line, file=sys.stderr)
        raise SystemExit(1 if found else 0)
