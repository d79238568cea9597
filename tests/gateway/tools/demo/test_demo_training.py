"""The training loop: seeded (two runs give the same losses), it learns, it shows progress."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.tools.demo import checkpoints
from gateway.tools.demo.batches import Qwen2AudioBatcher
from gateway.tools.demo.synthetic import Task
from gateway.tools.demo.training import ProgressBar, TrainingPlan, train


@pytest.fixture()
def audio_checkpoint(tmp_path: Path) -> Path:
    checkpoints.build_qwen2_audio(tmp_path)
    return tmp_path


def test_pitch_is_learned_in_a_few_dozen_steps(audio_checkpoint: Path) -> None:
    """Below what the answers' text alone allows: "a high tone" / "a low tone" + <|im_end|>
    differ in one of 5-6 tokens, so a model deaf to the audio stays near ln(2) / 5.5 = 0.13."""
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_checkpoint)
    plan = TrainingPlan(
        (Task.AUDIO,), num_examples=128, num_steps=60, batch_size=16, learning_rate=3e-3
    )
    loss = train(model, Qwen2AudioBatcher(audio_checkpoint), plan, "audio")
    assert loss < 0.1


def test_training_is_seeded(audio_checkpoint: Path) -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    plan = TrainingPlan((Task.AUDIO,), num_examples=16, num_steps=3, batch_size=4)
    batcher = Qwen2AudioBatcher(audio_checkpoint)
    losses = []
    for _ in range(2):
        model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_checkpoint)
        losses.append(train(model, batcher, plan, "audio"))
    assert losses[0] == losses[1]


def test_the_learning_rate_warms_up_then_decays() -> None:
    plan = TrainingPlan((Task.TEXT,), num_steps=100, warmup_steps=10, learning_rate=1e-3)
    rates = [plan.learning_rate_at(step) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[99] < rates[50] < rates[10] and rates[99] >= 1e-4


def test_the_progress_bar_reports_steps_and_loss(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar("demo", 20)
    for step in range(1, 21):
        bar.update(step, 1.0 / step)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10  # not a terminal: one line per tenth
    assert lines[-1].startswith("  demo [" + "#" * ProgressBar.WIDTH + "] 20/20 loss 0.050")
