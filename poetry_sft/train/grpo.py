"""The GRPO stage: TRL's GRPOTrainer, its rewards the prosody critic's parts (train/rewards.py).

    poetry-sft train recipe=demo_grpo init_run=runs/<demo run>

The model of `init_run` (train/stages.py) writes `stage.num_generations` poems for each title of its own
training set (`stage.prompts` of them, asked exactly as it was trained: chat template, rhyme hints); each
poem is scored by the critic's parts, and the policy moves towards the poems that beat their group. No
vLLM (a 4-8 GB card has no room for a second engine); `stage.beta` > 0 adds TRL's KL penalty to the start
model. The run ends like an SFT run (model/, metrics.json, log_history.json with the reward curves,
reward_curve.png, eval_report before vs after, model card), so everything downstream works on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poetry_sft.config.schema import RunConfig
from poetry_sft.data.corpus import prepare_poems
from poetry_sft.data.prompts import asked_rhyme_group, generation_prompt
from poetry_sft.evaluate.generate import THINK_TOKENS, token_ids
from poetry_sft.model.loading import load_for_training, load_tokenizer, resolve_model_path, resolve_precision
from poetry_sft.poetry.critic import PARTS
from poetry_sft.run import artifacts
from poetry_sft.train import sft
from poetry_sft.train.rewards import reward_functions
from poetry_sft.train.stages import stage_subjects

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase
    from trl import GRPOConfig, GRPOTrainer

log = logging.getLogger(__name__)

REWARD_CURVE_FILE = "reward_curve.png"


def prompts_dataset(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """The rendered generation prompts of `stage.prompts` training titles, with the columns the rewards
    read: the title (title-copy penalty) and the 韵部 a rhyme-aware prompt asks for."""
    from datasets import Dataset

    data = prepare_poems(cfg.data, tokenizer, max_length=cfg.hardware.max_length)
    subjects = stage_subjects(data.train_rows, cfg.stage.prompts, cfg.train.seed)
    groups = [asked_rhyme_group(cfg.data, subject, cfg.generation.rhyme_group) for subject in subjects]
    prompts = [
        generation_prompt(tokenizer, cfg.data, subject, form=cfg.generation.form, rhyme_group=group)
        for subject, group in zip(subjects, groups, strict=True)
    ]
    return Dataset.from_dict({"prompt": prompts, "title": subjects, "rhyme_group": groups})


def grpo_config(
    cfg: RunConfig, run_dir: Path, reward_weights: list[float], think_ids: list[int]
) -> GRPOConfig:
    import torch
    from trl import GRPOConfig

    stage = cfg.stage
    return GRPOConfig(
        **sft.trainer_args(cfg, run_dir, resolve_precision(cfg.train.precision), torch.cuda.is_available()),
        eval_strategy="no",  # the eval report judges the poems; GRPO has no held-out loss
        num_generations=stage.num_generations,
        max_completion_length=stage.max_completion_length,
        temperature=stage.temperature,
        top_p=cfg.generation.top_p,
        top_k=cfg.generation.top_k,
        # the sampling the model is used with: without the penalty the policy explores loops it never writes
        repetition_penalty=cfg.generation.repetition_penalty,
        generation_kwargs={"suppress_tokens": think_ids} if think_ids else None,
        beta=stage.beta,
        reward_weights=reward_weights,
        mask_truncated_completions=False,  # a poem cut off is penalised (no_eos), not hidden from the loss
        log_completions=False,
        remove_unused_columns=False,  # the rewards read the title and rhyme_group columns
    )


def build_trainer(cfg: RunConfig, run_dir: Path) -> GRPOTrainer:
    from trl import GRPOTrainer

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.model.revision)
    dataset = prompts_dataset(cfg, tokenizer)
    think_ids = token_ids(tokenizer, THINK_TOKENS)  # a poem never needs them (as in generate)
    eos = [tokenizer.eos_token_id]
    functions, weights = reward_functions(_weights(cfg), cfg.generation.form, eos, cfg.stage.rhyme_variety)
    model, adapter = load_for_training(cfg, model_path, artifacts.init_adapter_dir(cfg))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=list[Any](functions),
        args=grpo_config(cfg, run_dir, weights, think_ids),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=adapter,
    )
    assert trainer.model is not None
    sft.keep_adapters_fp32(trainer.model)
    from poetry_sft.train.callbacks import NonFiniteLossCallback

    trainer.add_callback(NonFiniteLossCallback(cfg, str(resolve_precision(cfg.train.precision))))
    return trainer


def _weights(cfg: RunConfig) -> dict[str, float]:
    import dataclasses

    return dataclasses.asdict(cfg.critic)


def train(
    cfg: RunConfig, run_dir: Path, on_training_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Train the GRPO stage and finish the run directory; returns its metrics."""
    checkpoint, resumed = sft.find_where_to_resume(run_dir, cfg)
    artifacts.save_run_config(cfg, run_dir)
    sft.cap_gpu_memory(cfg.hardware)
    trainer = build_trainer(cfg, run_dir)
    if on_training_start:
        on_training_start()
    result, clock = sft.run_training(trainer, run_dir, checkpoint, resumed)
    sft.save_model(trainer, run_dir)
    metrics = _measure(cfg, trainer, result.training_loss, clock.train_seconds, resumed)
    metrics["checkpoint_save_s"] = round(clock.save_seconds, 2)
    if not artifacts.is_main_process():
        return metrics
    from poetry_sft.evaluate.showcase import plot_history

    history = trainer.state.log_history
    plot_history(
        _as_scores(history, cfg), run_dir / REWARD_CURVE_FILE, reward_keys(history), ylabel="0-1 a part"
    )
    sft.write_history_and_metrics(run_dir, history, metrics)
    sft.finish_report(cfg, run_dir)
    return metrics


def reward_keys(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(log key, label) of the rewards TRL logged: the weighted total and each part's mean."""
    logged = {key for entry in history for key in entry}
    parts = sorted(key for key in logged if key.startswith("rewards/") and key.endswith("/mean"))
    return [("reward", "total / the parts' weights")] * ("reward" in logged) + [
        (key, key.split("/")[1]) for key in parts
    ]


def _as_scores(history: list[dict[str, Any]], cfg: RunConfig) -> list[dict[str, Any]]:
    """The log with the weighted total divided by the parts' weights (the critic's score, when no variety
    reward is added), so that it shares the parts' 0-1 axis in the plot."""
    scale = sum(getattr(cfg.critic, part) for part in PARTS) + cfg.stage.rhyme_variety
    return [{**entry, "reward": entry["reward"] / scale} if "reward" in entry else entry for entry in history]


def _measure(
    cfg: RunConfig, trainer: GRPOTrainer, training_loss: float, seconds: float, resumed: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json of a GRPO run: the rewards at the start and the end, speed, memory."""
    history = trainer.state.log_history
    logged = [entry for entry in history if "reward" in entry]

    def window(entries: list[dict[str, Any]], key: str) -> float | None:
        values = [entry[key] for entry in entries if key in entry]
        return round(sum(values) / len(values), 4) if values else None

    first, last = logged[:3], logged[-3:]  # a few logging steps each: a group's mean is noisy
    rewards = {
        ("total (weighted)" if key == "reward" else label): {
            "start": window(first, key),
            "end": window(last, key),
        }
        for key, label in reward_keys(history)
    }
    model = trainer.model
    assert model is not None
    return {
        "stage": str(cfg.stage.name),
        "init_run": cfg.init_run,
        "train_loss": training_loss,
        "eval_loss": None,  # no held-out loss in GRPO: the eval report judges the poems
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(seconds, 2),  # the training loop without checkpoint saves (train/clock.py)
        "resumed_from_step": resumed.get("global_step"),
        "rewards": rewards,
        "completions_per_step": cfg.hardware.per_device_train_batch_size
        * cfg.hardware.gradient_accumulation_steps,
        "trainable_params": sum(int(p.numel()) for p in model.parameters() if p.requires_grad),
        "model_params": sft.model_params(model),
        **sft.planned_memory(cfg),
        **sft.peak_memory(),
    }
