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
    `train_seconds` is the rest: forward, backward, optimizer steps and data loading."""

    def __init__(self) -> None:
        self.loop_seconds = 0.0
        self.eval_seconds = 0.0
        self.save_seconds = 0.0
        self._loop_started: float | None = None
        self._mark: float | None = None  # when the current stretch of non-training work began

    @property
    def train_seconds(self) -> float:
        return max(self.loop_seconds - self.eval_seconds - self.save_seconds, 0.0)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._loop_started = self._mark = time.perf_counter()  # eval_on_start counts as evaluation

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._mark = time.perf_counter()

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.eval_seconds += self._lap()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.save_seconds += self._lap()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._loop_started is not None:
            self.loop_seconds += time.perf_counter() - self._loop_started
        self._loop_started = self._mark = None

    def _lap(self) -> float:
        """Seconds since the mark, and a new mark; 0 outside the training loop (an evaluate() after it)."""
        if self._mark is None:
            return 0.0
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        return seconds
