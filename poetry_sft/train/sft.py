"""A validated RunConfig -> one TRL SFTTrainer run -> a finished run directory."""

from __future__ import annotations

import logging
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poetry_sft import atomic
from poetry_sft.config.schema import (
    Batching,
    DataConfig,
    HardwareConfig,
    Precision,
    RunConfig,
    resolve_batching,
)
from poetry_sft.data.corpus import prepare_poems
from poetry_sft.data.prompts import refuse_control_tokens
from poetry_sft.errors import DiskFullError, RunDirError, is_disk_full, is_unwritable
from poetry_sft.model.loading import (
    load_for_training,
    load_tokenizer,
    precision_choice,
    resolve_model_path,
    resolve_precision,
)
from poetry_sft.run import artifacts

if TYPE_CHECKING:
    import torch
    from transformers import Trainer
    from transformers.trainer_utils import TrainOutput
    from trl import SFTConfig, SFTTrainer

    from poetry_sft.train.clock import TrainingClock

log = logging.getLogger(__name__)

# What a CUDA context takes on a consumer card before the allocator gets anything (driver + kernels).
CUDA_CONTEXT_GIB = 0.4


def sft_config(cfg: RunConfig, run_dir: Path) -> SFTConfig:
    """Our config groups, translated into TRL/transformers arguments, plus the `trainer.*` pass-through."""
    import torch
    from trl import SFTConfig

    precision = resolve_precision(cfg.train.precision)
    return SFTConfig(**_our_sft_args(cfg, run_dir, precision, torch.cuda.is_available()), **cfg.trainer)


def _our_sft_args(cfg: RunConfig, run_dir: Path, precision: Precision, cuda: bool) -> dict[str, Any]:
    return dict(
        **trainer_args(cfg, run_dir, precision, cuda),
        per_device_eval_batch_size=cfg.hardware.per_device_train_batch_size,
        **_batching_args(cfg),
        eval_strategy="steps",
        eval_steps=cfg.train.eval_steps,
        include_num_input_tokens_seen="non_padding",  # real tokens, for tokens/s
    )


def trainer_args(cfg: RunConfig, run_dir: Path, precision: Precision, cuda: bool) -> dict[str, Any]:
    """The transformers TrainingArguments every stage sets from our groups (SFT's SFTConfig, GRPO's
    GRPOConfig): where checkpoints go, the batch, the optimizer and its schedule, steps, precision."""
    hw, train = cfg.hardware, cfg.train
    return dict(
        output_dir=str(run_dir / artifacts.CHECKPOINTS_DIR),
        per_device_train_batch_size=hw.per_device_train_batch_size,
        gradient_accumulation_steps=hw.gradient_accumulation_steps,
        gradient_checkpointing=hw.gradient_checkpointing,
        optim=cfg.optimizer,
        learning_rate=cfg.method.learning_rate,
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio,  # < 1 is read as a fraction of the total steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        bf16=precision is Precision.bf16,
        fp16=precision is Precision.fp16,
        use_cpu=not cuda,
        seed=train.seed,
        dataloader_num_workers=train.dataloader_num_workers,
        report_to=train.report_to,
        logging_nan_inf_filter=False,  # a NaN/inf loss must show: it stops the run (NonFiniteLossCallback)
    )


def trainer_problems(cfg: RunConfig) -> list[str]:
    """The `trainer.*` pass-through: each key must be an SFTConfig field that our groups do not set."""
    if not cfg.trainer:
        return []
    import dataclasses
    import difflib

    from trl import SFTConfig

    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    ours = set(_our_sft_args(cfg, Path("."), Precision.fp32, cuda=False)) | {"bf16", "fp16"}
    problems = []
    for key in cfg.trainer:
        if key in ours:
            instead = _OUR_KEY_FOR.get(key)
            problems.append(
                f"trainer.{key} is set by our config. Fix: use {instead} instead of passing it through"
                if instead
                else f"trainer.{key} is set by poetry_sft itself (train/sft.py). Fix: drop it"
            )
        elif key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean trainer.{close[0]}?" if close else ""
            problems.append(
                f"trainer.{key} is not an option of TRL's SFTConfig.{hint} Fix: name one of SFTConfig's "
                "fields (TRL's docs list them), or drop it"
            )
        elif problem := _pass_through_type_problem(key, cfg.trainer[key]):
            problems.append(problem)
    if cfg.trainer.get("use_liger_kernel"):
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            problems.append(
                "trainer.use_liger_kernel=true needs the liger-kernel package (Linux + CUDA + Triton): "
                "pip install liger-kernel, or drop the option"
            )
    return problems


# SFTConfig's arguments that our keys set (sft_config), for the refusal of trainer.<them>
_OUR_KEY_FOR = {
    "per_device_train_batch_size": "hardware.per_device_train_batch_size",
    "per_device_eval_batch_size": "hardware.per_device_train_batch_size",
    "gradient_accumulation_steps": "hardware.gradient_accumulation_steps",
    "gradient_checkpointing": "hardware.gradient_checkpointing",
    "max_length": "hardware.max_length",
    "optim": "method.optimizer",
    "learning_rate": "method.learning_rate",
    "warmup_steps": "train.warmup_ratio",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "packing": "data.batching",
    "padding_free": "data.batching",
    "output_dir": "run_dir",
    **{
        name: f"train.{name}"
        for name in (
            "lr_scheduler_type",
            "weight_decay",
            "max_grad_norm",
            "num_train_epochs",
            "max_steps",
            "logging_steps",
            "eval_steps",
            "save_steps",
            "save_total_limit",
            "seed",
            "dataloader_num_workers",
            "report_to",
        )
    },
}


def _pass_through_type_problem(key: str, value: Any) -> str | None:
    """A `trainer.*` value of the wrong type for its SFTConfig field (trainer.neftune_noise_alpha=abc would
    pass SFTConfig, a plain dataclass, and fail at the first step). Fields that also take text (optim,
    report_to, ...) take any text here: TRL reads those itself."""
    import typing

    from trl import SFTConfig

    hint = typing.get_type_hints(SFTConfig).get(key)
    if hint is None or value is None:
        return None
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        allowed = [hint]
    if any(_has_type(value, kind) for kind in allowed):
        return None
    wanted = " or ".join(_TYPE_WORDS.get(typing.get_origin(a) or a, str(a)) for a in allowed)
    shown = " | ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(hint) or [hint])
    shown = shown.replace("NoneType", "None")
    first = typing.get_origin(allowed[0]) or allowed[0]
    example = {bool: "true", int: "1", float: "0.5", dict: "{key: value}", list: "[a,b]"}.get(first, "...")
    return (
        f"trainer.{key}={value!r} must be {wanted} (TRL's SFTConfig.{key}: {shown}). Fix: give it {wanted}, "
        f"e.g. trainer.{key}={example}"
    )


_TYPE_WORDS: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    dict: "a mapping",
    list: "a list",
}


def _has_type(value: Any, kind: Any) -> bool:
    import typing

    origin = typing.get_origin(kind) or kind
    if not isinstance(origin, type):
        return True  # Any, Literal, a TypeVar: not checked here
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin)


def _batching_args(cfg: RunConfig) -> dict[str, Any]:
    """How batches are cut. The data pipeline already dropped poems over max_length, so only packing
    needs TRL's max_length (its row length); elsewhere None skips TRL's truncation pass."""
    batching = resolve_batching(cfg)
    if batching is Batching.packing:
        return {"packing": True, "packing_strategy": "bfd", "max_length": cfg.hardware.max_length}
    if batching is Batching.padding_free:
        return {"padding_free": True, "max_length": None}
    # Length-grouped batches of similar poems; the sampler reads our `length` column, which the
    # collator ignores, so keep it instead of letting Trainer drop it and re-measure every row.
    return {
        "max_length": None,
        "train_sampling_strategy": "group_by_length",
        "length_column_name": "length",
        "remove_unused_columns": False,
    }


def build_trainer(cfg: RunConfig, run_dir: Path, poems: DataConfig | None = None) -> SFTTrainer:
    """The run's SFTTrainer. `poems`: train on these poems instead of cfg.data's (the rejection stage's
    kept poems), with cfg.data's prompts all the same."""
    from trl import SFTTrainer

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.model.revision)
    # Titles the run generates from (mid-training and at the end): refused now, not after hours of training
    refuse_control_tokens(tokenizer, "generation.eval_titles:", cfg.generation.eval_titles)
    refuse_control_tokens(tokenizer, "sample_titles:", cfg.sample_titles)
    data = prepare_poems(poems or cfg.data, tokenizer, max_length=cfg.hardware.max_length)
    log.info(data.summary())
    if artifacts.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / artifacts.DATA_REPORT_FILE, data.report)
    model, adapter = load_for_training(cfg, model_path, artifacts.init_adapter_dir(cfg))
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, run_dir),
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=adapter,
    )
    assert trainer.model is not None
    keep_adapters_fp32(trainer.model)
    from poetry_sft.train.callbacks import NonFiniteLossCallback

    trainer.add_callback(NonFiniteLossCallback(cfg, str(resolve_precision(cfg.train.precision))))
    if cfg.generation.eval_titles:  # poems scored at each evaluation, logged beside eval_loss
        from poetry_sft.train.callbacks import PoetryEvalCallback

        trainer.add_callback(PoetryEvalCallback(trainer, cfg, run_dir))
    return trainer


def keep_adapters_fp32(model: torch.nn.Module) -> None:
    """TRL casts a quantised model's adapters to bf16 (the QLoRA paper's recipe). In bf16 an AdamW step
    smaller than half the weight's ulp is lost: after 3 steps at lr 2e-4 only 25% of the tiny model's
    lora_A elements had moved (fp32: 100%; tests/test_training.py). Adapters are a few MB, so they train
    in fp32 like LoRA's (peft's autocast_adapter_dtype); the 4-bit base still computes in bf16/fp16."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()


def real_token_fraction(trainer: SFTTrainer, max_batches: int = 64) -> float:
    """Real (non-padding) tokens / all token slots, over the first batches the trainer's own dataloader
    yields. The RNG is forked so that measuring does not change the order training sees."""
    import torch

    real = total = 0
    with torch.random.fork_rng():
        for i, batch in enumerate(trainer.get_train_dataloader()):
            if i == max_batches:
                break
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            real += (
                int(mask.sum())
                if mask is not None
                else int((ids != getattr(trainer.processing_class, "pad_token_id", None)).sum())
            )
            total += ids.numel()
    return round(real / total, 4) if total else 0.0


def train(
    cfg: RunConfig,
    run_dir: Path,
    on_training_start: Callable[[], None] | None = None,
    poems: DataConfig | None = None,
) -> dict[str, Any]:
    """Train, save the adapter or model, evaluate, and mark the run finished. Returns its metrics.

    A run directory with checkpoints of the same config resumes from the newest complete one: Trainer
    restores weights, optimizer, scheduler and RNG state and skips the batches already seen.
    `on_training_start` is called once data and model are ready (the command line's cue that a failure
    from then on leaves a run to resume, not a stub to remove).
    """
    checkpoint, resumed = find_where_to_resume(run_dir, cfg)
    trainer = _build(cfg, run_dir, checkpoint, poems)
    token_fraction = real_token_fraction(trainer)
    if on_training_start:
        on_training_start()
    result, clock = run_training(trainer, run_dir, checkpoint, resumed)
    eval_metrics = _final_evaluation(trainer, clock)
    save_model(trainer, run_dir)
    metrics = _measure(cfg, trainer, result, eval_metrics, clock, resumed, token_fraction)
    if not artifacts.is_main_process():
        return metrics  # under accelerate launch, rank 0 alone samples and writes the run's files
    _sample_and_write(cfg, run_dir, trainer, metrics)
    finish_report(cfg, run_dir)
    return metrics


def find_where_to_resume(run_dir: Path, cfg: RunConfig) -> tuple[Path | None, dict[str, Any]]:
    """The newest complete checkpoint of this config (None: a fresh start) and its trainer state."""
    checkpoint = artifacts.find_resume_checkpoint(run_dir, cfg)
    _warn_about_damaged_checkpoints(run_dir, checkpoint)
    resumed = artifacts.read_trainer_state(checkpoint) if checkpoint else {}  # before rotation deletes it
    return checkpoint, resumed


def _build(cfg: RunConfig, run_dir: Path, checkpoint: Path | None, poems: DataConfig | None) -> SFTTrainer:
    """The run's config saved, the GPU capped to the profile, data prepared, model and trainer built."""
    artifacts.save_run_config(cfg, run_dir)
    cap_gpu_memory(cfg.hardware)
    log.info("precision: %s", precision_choice(cfg.train.precision)[1])
    trainer = build_trainer(cfg, run_dir, poems)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    else:
        log.info("interrupted? the same command with run_dir=%s resumes from the last checkpoint", run_dir)
    return trainer


def run_training(
    trainer: Trainer, run_dir: Path, checkpoint: Path | None, resumed: dict[str, Any]
) -> tuple[TrainOutput, TrainingClock]:
    """trainer.train (or the final checkpoint, where the run had already ended), and where its time went."""
    from poetry_sft.train.clock import TrainingClock

    # Only now that the run trains: a start that fails (data, model) leaves the directory as it was
    artifacts.discard_incomplete_checkpoints(run_dir)
    _reset_peak_memory()
    clock = TrainingClock()
    trainer.add_callback(clock)  # last: its evaluation time includes the other callbacks' work on it
    if checkpoint and 0 < resumed.get("max_steps", 0) <= resumed["global_step"]:
        result = _load_final_checkpoint(trainer, checkpoint)
    else:
        with _explain_disk_full(run_dir, "a checkpoint"):
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return result, clock


def _final_evaluation(trainer: SFTTrainer, clock: TrainingClock) -> dict[str, float]:
    """The run's evaluation at its last step, done once. Under eval_strategy="steps" Trainer evaluates at the
    last step by itself (transformers' DefaultFlowCallback), so its logged result is taken; a run loaded
    from its final checkpoint has it in that checkpoint's log. Only where neither holds one (an
    eval_delay past the end) does it evaluate here."""
    step = trainer.state.global_step
    logged: dict[str, float] = {}
    for entry in trainer.state.log_history:
        if entry.get("step") == step:  # eval_loss, and the eval callback's scores logged beside it
            logged.update({key: value for key, value in entry.items() if key.startswith("eval_")})
    if "eval_loss" in logged:
        return logged
    started = time.perf_counter()
    metrics = trainer.evaluate()
    clock.eval_seconds += time.perf_counter() - started
    return metrics


def save_model(trainer: Trainer, run_dir: Path) -> None:
    with _explain_disk_full(run_dir, "the trained model"):
        trainer.save_model(str(run_dir / artifacts.MODEL_DIR))  # PEFT: adapter files only; and the tokenizer


def _measure(
    cfg: RunConfig,
    trainer: SFTTrainer,
    result: TrainOutput,
    eval_metrics: dict[str, float],
    clock: TrainingClock,
    resumed: dict[str, Any],
    token_fraction: float,
) -> dict[str, Any]:
    """metrics.json: losses, steps, speed, sizes, planned and peak memory. The speed is training's alone:
    train_runtime_s leaves out evaluations and checkpoint saves (eval_runtime_s, checkpoint_save_s)."""
    model = trainer.model
    assert model is not None
    tokens = int(trainer.state.num_input_tokens_seen)
    new_tokens = tokens - int(resumed.get("num_input_tokens_seen", 0))  # this session's, for the speed
    train_seconds = clock.train_seconds
    return {
        "train_loss": result.training_loss,
        "eval_loss": eval_metrics.get("eval_loss"),
        "first_logged_loss": next((h["loss"] for h in trainer.state.log_history if "loss" in h), None),
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(train_seconds, 2),
        "train_cpu_s": round(clock.train_cpu_seconds, 2),  # CPU seconds of this process over the same time
        "eval_runtime_s": round(clock.eval_seconds, 2),
        "checkpoint_save_s": round(clock.save_seconds, 2),
        "trained_tokens": tokens,
        "tokens_per_s": round(new_tokens / train_seconds, 1) if train_seconds else None,
        "resumed_from_step": resumed.get("global_step"),
        "real_token_fraction": token_fraction,  # of the batches' token slots; padding is the rest
        "trainable_params": sum(int(p.numel()) for p in model.parameters() if p.requires_grad),
        "model_params": model_params(model),
        **planned_memory(cfg),
        **peak_memory(),
        # The eval callback's final scores (generation.eval_titles), beside eval_loss for sweeps to choose by
        **{key: value for key, value in eval_metrics.items() if key.startswith("eval_poetry/")},
    }


def _sample_and_write(cfg: RunConfig, run_dir: Path, trainer: SFTTrainer, metrics: dict[str, Any]) -> None:
    """samples (sample_titles), then log_history.json and metrics.json: the run is finished."""
    if cfg.sample_titles:
        from poetry_sft.evaluate.generate import sample_finished_run

        metrics["samples"] = sample_finished_run(run_dir, cfg.sample_titles)
    with _explain_disk_full(run_dir, "the run's metrics"):
        atomic.write_json(run_dir / artifacts.LOG_HISTORY_FILE, trainer.state.log_history)
        atomic.write_json(run_dir / artifacts.METRICS_FILE, metrics)


def finish_report(cfg: RunConfig, run_dir: Path) -> None:
    """After metrics.json, so a failing report never costs the finished run: the eval report, the
    model card that quotes it, the demo's showcase."""
    if cfg.generation.report:
        from poetry_sft.evaluate.report import write_report

        write_report(run_dir)
    from poetry_sft.run.model_card import write_run_card

    write_run_card(run_dir, cfg)  # README.md model card, after the report it quotes
    if cfg.generation.showcase:
        from poetry_sft.evaluate.showcase import showcase

        print("\n" + showcase(run_dir), flush=True)


def _load_final_checkpoint(trainer: Trainer, checkpoint: Path) -> TrainOutput:
    """Training had ended at `checkpoint` (its model was not saved: a kill, a full disk). Trainer resumed
    there would train one step past max_steps (transformers 5.x steps before it checks), so the
    checkpoint's weights and state are loaded instead. The train loss is the mean of the logged losses."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    log.info("%s is the run's last step: loading it to evaluate and save the model", checkpoint.name)
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / artifacts.TRAINER_STATE))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})


def _warn_about_damaged_checkpoints(run_dir: Path, resumed: Path | None) -> None:
    """Name each checkpoint newer than the one resumed that cannot be resumed (discarded next)."""
    skipped = artifacts.skipped_checkpoints(run_dir, resumed)
    if not skipped:
        return
    why = "; ".join(f"{path.name}: {problem}" for path, problem in sorted(skipped))
    if resumed:
        log.warning("resuming from %s, the newest complete checkpoint, instead of %s", resumed.name, why)
    else:
        log.warning(
            "no checkpoint in %s can be resumed (%s): this run starts again from step 0. To keep them, stop "
            "now (Ctrl-C) and move %s away",
            run_dir / artifacts.CHECKPOINTS_DIR,
            why,
            run_dir / artifacts.CHECKPOINTS_DIR,
        )


@contextmanager
def _explain_disk_full(run_dir: Path, what: str) -> Iterator[None]:
    """A full disk while saving: remove what was half-written (it would only take space) and say where the
    run can go on from, instead of a traceback from deep inside torch or safetensors."""
    try:
        yield
    except Exception as err:
        if is_unwritable(err):  # made read-only, or its permissions changed, while the run trained
            raise RunDirError(
                f"cannot write to {run_dir} while saving {what} ({err}): the folder or its disk became "
                "read-only.\n  Fix: make it writable again and run the same command: it resumes from the "
                "last complete checkpoint."
            ) from err
        if not is_disk_full(err, run_dir):
            raise
        artifacts.discard_incomplete_checkpoints(run_dir)
        if what == "the trained model":
            shutil.rmtree(run_dir / artifacts.MODEL_DIR, ignore_errors=True)
        raise DiskFullError(_disk_full_message(run_dir, what)) from err


def _disk_full_message(run_dir: Path, what: str) -> str:
    usage = shutil.disk_usage(run_dir)
    # What is left after discard_incomplete_checkpoints: complete checkpoints only
    checkpoints = sorted(
        (p for p in (run_dir / artifacts.CHECKPOINTS_DIR).glob("checkpoint-*") if p.is_dir()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    size = sum(f.stat().st_size for f in checkpoints[-1].rglob("*") if f.is_file()) if checkpoints else 0
    where = (
        f"The last complete checkpoint, {checkpoints[-1]}, is intact: the same command resumes from it."
        if checkpoints
        else "No checkpoint was complete yet: the same command starts the run again from step 0."
    )
    need = f" (a checkpoint takes {size / 2**20:,.1f} MiB)" if size else ""
    return (
        f"no space left on the disk of {run_dir} while saving {what}: {usage.free / 2**30:,.2f} GiB free of "
        f"{usage.total / 2**30:,.1f} GiB. {where}\n"
        f"  Fix: free space on that disk{need} (or keep fewer checkpoints: train.save_total_limit=1), then "
        "run the command again; or train on a disk with room: run_dir=<path there> (a new run)."
    )


def cap_gpu_memory(hardware: HardwareConfig) -> None:
    """Emulate a `vram_gib` card: the allocator raises OOM past that, as the small card would."""
    import torch

    if not (hardware.emulate_budget and torch.cuda.is_available()):
        return
    total = torch.cuda.get_device_properties(0).total_memory
    # On the real card the CUDA context takes its share outside the allocator: the allocator gets the rest.
    context = CUDA_CONTEXT_GIB * 2**30
    fraction = max(hardware.vram_gib * 2**30 - context, 0) / total
    torch.cuda.set_per_process_memory_fraction(min(fraction, 1.0))
    log.info(
        "emulating a %s GiB card: allocator capped at %.2f GiB", hardware.vram_gib, fraction * total / 2**30
    )


def model_params(model: torch.nn.Module) -> int:
    """Parameters of the underlying model; peft counts a packed 4-bit weight as its real size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return int(model.get_nb_trainable_parameters()[1])  # type: ignore[operator]  # peft's, untyped
    return sum(p.numel() for p in model.parameters())


def planned_memory(cfg: RunConfig) -> dict[str, float]:
    """The memory plan's prediction, beside the measured peak (bench/bench_hardware.py compares them)."""
    from poetry_sft.model.memory import GIB
    from poetry_sft.model.plan import plan_run

    planned = plan_run(cfg)
    if planned is None:
        return {}
    plan = planned[0]
    return {
        "planned_peak_gib": round(plan.reserved / GIB, 3),
        "planned_total_gib": round(plan.total / GIB, 3),
    }


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float]:
    import torch

    if torch.cuda.is_available():
        return {
            "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
        }
    try:
        import resource
    except ImportError:  # Windows
        return {}
    scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss is bytes on macOS, KiB on Linux
    return {"peak_cpu_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 3)}


# The run's steps that the rejection-sampling and GRPO stages share (train/grpo.py, train/rejection.py):
# find_where_to_resume, cap_gpu_memory, keep_adapters_fp32, run_training, save_model, finish_report.


def write_history_and_metrics(run_dir: Path, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """log_history.json, then metrics.json: the run is finished."""
    with _explain_disk_full(run_dir, "the run's metrics"):
        atomic.write_json(run_dir / artifacts.LOG_HISTORY_FILE, history)
        atomic.write_json(run_dir / artifacts.METRICS_FILE, metrics)
