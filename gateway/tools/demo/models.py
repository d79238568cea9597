"""The demo's two trained checkpoints, built and trained once and cached.

Cache: `$MESHSERVE_DEMO_CACHE/trained-<TRAINING_VERSION>/<name>` (default root
`~/.cache/meshserve/demo`). Bump TRAINING_VERSION whenever the synthetic data, a checkpoint's
config or a training plan changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.tools.demo.synthetic import Task
from gateway.tools.demo.training import TrainingPlan

TRAINING_VERSION = "1"


@dataclass(frozen=True, slots=True)
class DemoModel:
    """One demo checkpoint: how it is built, what it learns, and its real counterpart.

    Args:
        name: its cache folder's name.
        label: what the demo prints for it.
        real_model: the hub checkpoint a user would serve instead.
        build: saves the untrained checkpoint into a folder; returns the model.
        batcher: makes the training batcher from the checkpoint folder.
    """

    name: str
    label: str
    real_model: str
    plan: TrainingPlan
    build: Callable[[Path], Any]
    batcher: Callable[[Path], Any]

    @property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(dict.fromkeys(self.plan.tasks))


def demo_models() -> tuple[DemoModel, ...]:
    from gateway.tools.demo import batches, checkpoints

    vision = DemoModel(
        name="qwen2_vl",
        label="Qwen2-VL (one vision tower for images and videos; text questions too)",
        real_model="Qwen/Qwen2-VL-2B-Instruct",
        # NOTE: videos twice as often: motion is the lesson learned last, and not always by
        # step 500 with an even mix
        plan=TrainingPlan(
            (Task.IMAGE, Task.VIDEO, Task.VIDEO, Task.TEXT), num_steps=600, batch_size=16
        ),
        build=checkpoints.build_qwen2_vl,
        batcher=batches.Qwen2VLBatcher,
    )
    audio = DemoModel(
        name="qwen2_audio",
        label="Qwen2-Audio (audio tower)",
        real_model="Qwen/Qwen2-Audio-7B-Instruct",
        # NOTE: pitch is an easy lesson, learned in ~50 steps at a higher rate
        plan=TrainingPlan(
            (Task.AUDIO,), num_examples=256, num_steps=60, batch_size=16, learning_rate=3e-3
        ),
        build=checkpoints.build_qwen2_audio,
        batcher=batches.Qwen2AudioBatcher,
    )
    return (vision, audio)


def demo_cache_root() -> Path:
    base = os.environ.get("MESHSERVE_DEMO_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "meshserve" / "demo"
    return root / f"trained-{TRAINING_VERSION}"


def trained_checkpoint(model: DemoModel, root: Path | None = None) -> Path:
    """The folder of `model` trained, built on first use and cached under `root`."""
    from gateway.tools.tiny_models.build import build_once

    return build_once((root or demo_cache_root()) / model.name, lambda out: train_into(model, out))


def train_into(model: DemoModel, out: Path) -> float:
    """Build `model`'s untrained checkpoint in `out`, train it, save it; returns the final loss."""
    from gateway.tools.demo.training import train
    from gateway.tools.tiny_models.weights import save_checkpoint

    started = time.monotonic()
    network = model.build(out)
    loss = train(network, model.batcher(out), model.plan, model.name)
    save_checkpoint(out, network)  # NOTE: over the untrained weights; the rest stays
    print(f"  {model.name}: trained in {time.monotonic() - started:.1f}s, loss {loss:.3f}")
    return loss


def scaled(model: DemoModel, *, steps: float = 1.0, examples: float = 1.0) -> DemoModel:
    """`model` with a smaller plan (tests): shares of its steps and of its examples."""
    plan = model.plan
    smaller = replace(
        plan,
        num_steps=max(1, round(plan.num_steps * steps)),
        num_examples=max(plan.batch_size, round(plan.num_examples * examples)),
    )
    return replace(model, plan=smaller)
