"""The README's support table, generated from the tests: `make support-table`.

One row per row of the seed's model tables (text and multimodal, every task): the
implementation that runs it (native / transformers / generic tower), the tests that prove it,
and for a row that no test proves, why.

Proving a row: mark any test (in any test file, no edit here needed) with the seed row's
architecture, as the seed spells it, and its task:

    @pytest.mark.seed_row("LlavaNextForConditionalGeneration", "generate")
    def test_llava_next_matches_hf(...): ...

    # or per parameter
    pytest.param("mamba", marks=pytest.mark.seed_row("MambaForCausalLM", "generate"))

Add `impl="transformers"` (or "native", "generic tower") when the test forces an
implementation; without it the implementation is the one `model_impl="auto"` picks. A row is
supported when at least one of its tests passed.

Commands (`python -m gateway.tools.support_table ...`):
    run     run every marked test (`pytest -m seed_row`), write `results.json` next to this
            file and rewrite the README section (what `make support-table` does);
    render  rewrite the README section from the committed `results.json` only;
    check   exit 1 when the README section or `results.json` is stale: the marked tests
            collected now differ from those in `results.json`, or a row has no reason
            (`tests/gateway/tools/test_support_table.py` runs it).

Reasons for rows no test proves live in `reasons.py`; rows of architectures transformers lacks
get theirs automatically.
"""

from gateway.tools.support_table.render import RowStatus, markdown, statuses
from gateway.tools.support_table.seed import SeedRow, find_seed, parse_seed

__all__ = ["RowStatus", "SeedRow", "find_seed", "markdown", "parse_seed", "statuses"]
