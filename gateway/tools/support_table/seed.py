"""The seed's model tables (`supported_models.zh.md`), row by row."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SEED_NAME = "supported_models.zh.md"
TEXT_SECTION = "## 纯文本语言模型列表"
MULTIMODAL_SECTION = "## 多模态语言模型列表"
TASK_HEADING = re.compile(r"^#### .*\(`--task (\w+)`\)")
ARCHITECTURE_COLUMN = "架构"
INPUT_COLUMN = "输入"
# Seed architectures that transformers serves under another class name (vLLM's names); a test
# may mark either name.
TRANSFORMERS_NAMES: dict[str, tuple[str, ...]] = {
    "PixtralForConditionalGeneration": ("Mistral3ForConditionalGeneration",),
    "InternVLChatModel": ("InternVLForConditionalGeneration",),
    "Phi4MMForCausalLM": ("Phi4MultimodalForCausalLM",),
}


@dataclass(frozen=True, slots=True)
class SeedRow:
    """One row of one of the seed's tables.

    Args:
        section: "text" or "multimodal" (the seed's two lists).
        task: generate, embed, classify, score, reward or transcription.
        cell: the architecture cell as written, e.g. "CohereForCausalLM, Cohere2ForCausalLM".
        architectures: the names in it ("^" and "etc." dropped).
        inputs: the input notation of multimodal rows ("T + IE+"), else None.
    """

    section: str
    task: str
    cell: str
    architectures: tuple[str, ...]
    inputs: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Its architectures and the transformers classes that serve them."""
        aliases = (
            alias for name in self.architectures for alias in TRANSFORMERS_NAMES.get(name, ())
        )
        return self.architectures + tuple(aliases)


def seed_candidates(root: Path) -> list[Path]:
    """Where the seed may be: $MESHSERVE_SEED_DIR, <repo>/seed, <repo>/shared/seed, ../shared/seed."""
    folders = [root / "seed", root / "shared" / "seed", root.parent / "shared" / "seed"]
    if os.environ.get("MESHSERVE_SEED_DIR"):
        folders.insert(0, Path(os.environ["MESHSERVE_SEED_DIR"]))
    return [folder / SEED_NAME for folder in folders]


def find_seed(root: Path) -> Path | None:
    return next((path for path in seed_candidates(root) if path.is_file()), None)


def parse_seed(text: str) -> list[SeedRow]:
    """Every row of every model table, text list first, in the seed's order."""
    text_start = text.index(TEXT_SECTION)
    mm_start = text.index(MULTIMODAL_SECTION)
    mm_end = text.find("\n## ", mm_start + 1)
    return _rows("text", text[text_start:mm_start]) + _rows(
        "multimodal", text[mm_start : mm_end if mm_end > 0 else len(text)]
    )


def _rows(section: str, body: str) -> list[SeedRow]:
    rows: list[SeedRow] = []
    task, header = "", None
    for line in body.splitlines():
        if heading := TASK_HEADING.match(line):
            task, header = heading.group(1), None
            continue
        cells = _cells(line)
        if cells is None or cells[0].startswith(":-"):
            continue
        if header is None:
            header = cells
            continue
        inputs = cells[header.index(INPUT_COLUMN)] if INPUT_COLUMN in header else None
        cell = _normalized(cells[header.index(ARCHITECTURE_COLUMN)]) or ""
        rows.append(SeedRow(section, task, cell, _names(cell), _normalized(inputs)))
    return rows


def _cells(line: str) -> list[str] | None:
    line = line.removeprefix(">").strip()
    if not line.startswith("|"):
        return None
    return [cell.strip() for cell in line.strip("|").split("|")]


def _names(cell: str) -> tuple[str, ...]:
    names = (name.strip().rstrip("^") for name in cell.split(","))
    return tuple(name for name in names if name and not name.startswith("etc"))


def _normalized(notation: str | None) -> str | None:
    return " ".join(notation.split()) if notation else None  # the seed has nbsp in some cells
