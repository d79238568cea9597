"""Training a demo checkpoint: AdamW on fresh synthetic batches, seeded, with a progress bar."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from gateway.tools.demo.synthetic import Example, Task, sample


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """How long and on what one checkpoint trains.

    Args:
        tasks: the tasks drawn, uniformly, for every example.
        num_examples: the synthetic examples made (and preprocessed) once; each step draws
            its batch from them.
        num_steps: optimizer steps.
        batch_size: examples per step.
        learning_rate: AdamW's peak rate (linear warm-up, then cosine decay to a tenth).
        seed: seeds torch and the example generator, so a run is reproducible.
    """

    tasks: tuple[Task, ...]
    num_examples: int = 1024
    num_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tasks or self.num_steps < 1 or self.batch_size < 1:
            raise ValueError("a training plan needs tasks, num_steps >= 1 and batch_size >= 1")

    def learning_rate_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.num_steps - self.warmup_steps)
        return self.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def examples(tasks: Sequence[Task], count: int, rng: np.random.Generator) -> list[Example]:
    """`count` fresh examples, each of a task drawn uniformly from `tasks`."""
    return [sample(tasks[int(rng.integers(len(tasks)))], rng) for _ in range(count)]


class Batcher(Protocol):
    def prepare(self, example: Example) -> Any: ...

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]: ...


def train(model: Any, batcher: Batcher, plan: TrainingPlan, label: str) -> float:
    """Trains `model` in place on `plan`; returns the mean loss of the last tenth of steps."""
    threads = torch.get_num_threads()
    # NOTE: the matrices are tiny: one thread is as fast alone and 20x faster on a busy
    # machine, where OpenMP's threads wait on each other
    torch.set_num_threads(1)
    try:
        return _train(model, batcher, plan, label)
    finally:
        torch.set_num_threads(threads)


def _train(model: Any, batcher: Batcher, plan: TrainingPlan, label: str) -> float:
    torch.manual_seed(plan.seed)
    rng = np.random.default_rng(plan.seed)
    pool = [batcher.prepare(example) for example in examples(plan.tasks, plan.num_examples, rng)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, weight_decay=0.01)
    progress = ProgressBar(label, plan.num_steps)
    losses: list[float] = []
    model.train()
    for step in range(plan.num_steps):
        for group in optimizer.param_groups:
            group["lr"] = plan.learning_rate_at(step)
        picks = rng.choice(len(pool), plan.batch_size, replace=False)
        loss = model(**batcher.collate([pool[i] for i in picks])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.update(step + 1, losses[-1])
    model.eval()
    progress.close()
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


class ProgressBar:
    """`label [#####-----] 120/300 loss 0.53 4.1s` on one terminal line (plain lines when
    stdout is not a terminal, every tenth of the way)."""

    WIDTH = 30

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.started = time.monotonic()
        self.is_tty = sys.stdout.isatty()
        self.printed = 0

    def update(self, done: int, loss: float) -> None:
        filled = self.WIDTH * done // self.total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"  {self.label} [{bar}] {done}/{self.total} loss {loss:.3f} "
        line += f"{time.monotonic() - self.started:.1f}s"
        if self.is_tty:
            print("\r" + line, end="", flush=True)
        elif done * 10 // self.total > self.printed or done == self.total:
            self.printed = done * 10 // self.total
            print(line, flush=True)

    def close(self) -> None:
        if self.is_tty:
            print(flush=True)
