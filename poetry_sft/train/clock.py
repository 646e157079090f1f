"""Where `trainer.train()`'s time goes: training steps, evaluations, checkpoint saves.

Trainer evaluates and saves inside its loop (at `eval_steps`/`save_steps`, and at the last step), so
the wall time of `trainer.train()` is not training time: on a 0.6B run on CPU, 130 s of 501 s were the
final evaluation and checkpoint. Tokens/s divided by that wall time would be biased against runs that
evaluate more, and against us in `bench/bench_hardware.py`'s comparison with the seed recipe.

Trainer calls its callbacks in order: `on_step_end` just before it logs, evaluates and saves, then
`on_evaluate` when an evaluation (and every callback's work on it, e.g. the poems PoetryEvalCallback
writes) is done, and `on_save` when a checkpoint is written. Added last, this callback's
`on_evaluate`/`on_save` come after every other callback's, so the intervals it measures hold all of it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments


class TrainingClock(TrainerCallback):
    """Seconds of `trainer.train()`: the whole loop, and the parts spent evaluating and saving checkpoints.
    `train_seconds` is the rest: forward, backward, optimizer steps and data loading. The same split is
    kept in CPU seconds of this process (all its threads): on a machine shared with other jobs, wall time
    stretches with their load while CPU seconds mostly do not (bench/bench_hardware.py compares both)."""

    def __init__(self) -> None:
        self.loop_seconds = self.eval_seconds = self.save_seconds = 0.0
        self.loop_cpu_seconds = self.eval_cpu_seconds = self.save_cpu_seconds = 0.0
        self._loop_started: tuple[float, float] | None = None
        self._mark: tuple[float, float] | None = None  # when the current stretch of non-training work began

    @property
    def train_seconds(self) -> float:
        return max(self.loop_seconds - self.eval_seconds - self.save_seconds, 0.0)

    @property
    def train_cpu_seconds(self) -> float:
        return max(self.loop_cpu_seconds - self.eval_cpu_seconds - self.save_cpu_seconds, 0.0)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._loop_started = self._mark = _now()  # eval_on_start counts as evaluation

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._mark = _now()

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        wall, cpu = self._lap()
        self.eval_seconds += wall
        self.eval_cpu_seconds += cpu

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        wall, cpu = self._lap()
        self.save_seconds += wall
        self.save_cpu_seconds += cpu

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._loop_started is not None:
            now = _now()
            self.loop_seconds += now[0] - self._loop_started[0]
            self.loop_cpu_seconds += now[1] - self._loop_started[1]
        self._loop_started = self._mark = None

    def _lap(self) -> tuple[float, float]:
        """Wall and CPU seconds since the mark, and a new mark; zero outside the training loop (an
        evaluate() after it)."""
        if self._mark is None:
            return 0.0, 0.0
        now = _now()
        wall, cpu = now[0] - self._mark[0], now[1] - self._mark[1]
        self._mark = now
        return wall, cpu


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()
