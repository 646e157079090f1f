"""Score poems while training: eval loss says how well the model predicts poems, not whether it writes them.

At every evaluation, `PoetryEvalCallback` writes a few poems on fixed titles with the model being
trained, scores them with `metrics.score_poems`, and logs the scores as `eval_poetry/<metric>` in
the same step's log (so `trainer.state.log_history`, TensorBoard/W&B and `trainer.evaluate()`'s
result carry them beside `eval_loss`, and sweeps can choose by form). The poems are appended to
`<run_dir>/eval_poems.jsonl` with their step. Enabled by `generation.eval_titles`.

Follows TRL's LogCompletionsCallback: the callback holds the trainer, to log through `trainer.log`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from transformers import PreTrainedTokenizerBase, TrainerCallback

from poetry_sft.config.schema import RunConfig
from poetry_sft.errors import TrainingDivergedError
from poetry_sft.evaluate.generate import generate_poems, score_generated
from poetry_sft.run import artifacts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, Trainer, TrainerControl, TrainerState, TrainingArguments

EVAL_POEMS_FILE = "eval_poems.jsonl"
PREFIX = "eval_poetry/"


class PoetryEvalCallback(TrainerCallback):
    def __init__(self, trainer: Trainer, cfg: RunConfig, run_dir: Path) -> None:
        self.trainer = trainer
        self.data_cfg = cfg.data
        self.sampling = cfg.generation
        self.critic = cfg.critic
        titles = cfg.generation.eval_titles
        self.titles = [titles[i % len(titles)] for i in range(cfg.generation.num_eval_poems)]
        self.poems_file = run_dir / EVAL_POEMS_FILE

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        # Unconstrained: the point is what the model writes on its own. generate_poems switches the model
        # to eval mode, uses the KV cache (no packing in generation), and restores train mode after.
        tokenizer = self.trainer.processing_class
        assert isinstance(tokenizer, PreTrainedTokenizerBase)  # training.train passes the tokenizer
        poems = generate_poems(
            # a PreTrainedModel, or a PeftModel around one: it generates as the model it wraps
            cast("PreTrainedModel", self.trainer.model),
            tokenizer,
            self.titles,
            self.data_cfg,
            self.sampling,
            constrain=False,
            max_new_tokens=self.sampling.eval_max_new_tokens,
            critic=self.critic,
            best_of=1,  # what the model writes on its own, not what the critic picks
        )
        scores = score_generated(poems, self.sampling.form, self.critic)
        # Unmeasurable metrics (None, e.g. format_accuracy without generation.form) are left out:
        # loggers want numbers.
        logs = {PREFIX + key: value for key, value in scores.items() if value is not None}
        if metrics is not None:
            metrics.update(logs)  # evaluate()'s return value, and metric_for_best_model, see them too
        self.trainer.log(logs)
        self.poems_file.parent.mkdir(parents=True, exist_ok=True)
        with self.poems_file.open("a", encoding="utf-8") as file:
            for poem in poems:
                record = {"step": state.global_step, **dataclasses.asdict(poem)}
                file.write(json.dumps(record, ensure_ascii=False) + "\n")


# What a diverging run logs; any one of them NaN or infinite stops it (grad_norm: the step that will poison
# the weights, logged before the loss shows it).
_WATCHED = ("loss", "train_loss", "eval_loss", "grad_norm")


class NonFiniteLossCallback(TrainerCallback):
    """Stops training at the first NaN/inf loss or gradient norm, before a checkpoint or metrics.json is
    written from it.

    Trainer logs the mean loss every logging_steps and, by default, hides NaN/inf steps in that mean
    (`logging_nan_inf_filter`, turned off in train/sft.py so they show). Each save step also logs, so a
    checkpoint is only written after a finite log: the checkpoints left behind are all from before the
    divergence, and the run directory, without metrics.json, stays an unfinished run.
    """

    def __init__(self, cfg: RunConfig, precision: str) -> None:
        self.cfg = cfg
        self.precision = precision  # the precision the run really trains in (auto resolved)
        # fp16 trains with a loss scaler whose first steps overflow on purpose (an inf gradient norm, the step
        # skipped, the scale halved): there only the loss tells a divergence
        self.watched = [key for key in _WATCHED if not (precision == "fp16" and key == "grad_norm")]

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if control.should_save:
            control.should_log = True  # the loss since the last log is checked before this checkpoint

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        bad = {key: logs[key] for key in self.watched if key in logs and not _finite(logs[key])}
        if bad:
            raise TrainingDivergedError(self.message(args, state.global_step, bad))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and "eval_loss" in metrics and not _finite(metrics["eval_loss"]):
            raise TrainingDivergedError(
                self.message(args, state.global_step, {"eval_loss": metrics["eval_loss"]})
            )

    def message(self, args: TrainingArguments, step: int, bad: dict[str, Any]) -> str:
        cfg, lr = self.cfg, self.cfg.method.learning_rate
        usual = (
            "5e-5 to 5e-4 for adapters" if cfg.method.uses_adapter else "1e-5 to 5e-5 for full fine-tuning"
        )
        causes = [f"a learning rate too high (method.learning_rate={lr:g}; usual: {usual})"]
        fixes = [f"lower method.learning_rate (say to {lr / 10:g})"]
        if self.precision == "fp16":
            causes.append("fp16 overflow, common with Qwen3 on cards without native bf16 such as a T4")
            fixes.append("train.precision=fp32 (or bf16 where poetry-sft doctor says the card has it)")
        if not cfg.train.max_grad_norm > 0:
            causes.append("no gradient clipping (train.max_grad_norm=0)")
            fixes.append("train.max_grad_norm=1.0")
        what = ", ".join(f"{key} {value}" for key, value in bad.items())
        checkpoint = artifacts.find_newest_checkpoint(Path(str(args.output_dir)).parent)
        kept = (
            f"its newest checkpoint, {checkpoint.name}, is from before the divergence"
            if checkpoint
            else "it has no checkpoint yet"
        )
        return (
            f"training diverged at step {step}: {what}. It stopped before a checkpoint or metrics.json was "
            f"written from it: {cfg.run_dir} stays an unfinished run, and {kept}. Likely causes: "
            f"{'; '.join(causes)}.\n"
            f"  Fix: {', '.join(fixes)}, and train again in a new directory, run_dir=runs/<new-name> "
            "(changed settings make a new run; delete this one when you no longer need it)."
        )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number: nothing to judge
