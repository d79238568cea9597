"""The tasks a served model runs (the seed's task column): one enum for the whole mesh."""

from __future__ import annotations

import enum

from protos.errors import InvalidRequest


class Task(enum.StrEnum):
    """What a served model does with a request; the value is the `--task` flag's word."""

    GENERATE = "generate"
    EMBED = "embed"
    CLASSIFY = "classify"
    SCORE = "score"
    REWARD = "reward"
    TRANSCRIPTION = "transcription"

    def __repr__(self) -> str:
        # Sentences for users quote the word ('embed'), not the enum member.
        return repr(self.value)

    @property
    def is_pooling(self) -> bool:
        """Pooling tasks return vectors from one forward pass instead of generating text."""
        return self in POOLING_TASKS

    @classmethod
    def parse(cls, value: str | Task, allowed: tuple[Task, ...] | None = None) -> Task:
        """`value` as a Task; InvalidRequest naming the choices for an unknown or unallowed one."""
        choices = allowed if allowed is not None else tuple(cls)
        try:
            task = cls(value)
        except ValueError:
            task = None
        if task not in choices:
            names = ", ".join(t.value for t in choices)
            raise InvalidRequest(f"unknown task {value!r}; expected one of {names}")
        return task


POOLING_TASKS: tuple[Task, ...] = (Task.EMBED, Task.CLASSIFY, Task.SCORE, Task.REWARD)
LM_TASKS: tuple[Task, ...] = (Task.GENERATE, *POOLING_TASKS)  # what an LM service can run
