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
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from transformers import PreTrainedTokenizerBase, TrainerCallback

from poetry_sft.config.schema import RunConfig
from poetry_sft.evaluate.generate import generate_poems
from poetry_sft.poetry import score_poems

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
        scores = score_poems(
            [poem.content for poem in poems],
            self.sampling.form,
            stopped_at_eos=[poem.stopped_at_eos for poem in poems],
            critic_weights=dataclasses.asdict(self.critic),
            titles=[poem.title for poem in poems],
            rhyme_groups=[poem.rhyme_group for poem in poems],
        )
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
