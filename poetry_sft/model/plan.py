"""The memory plan of a composed run: its shape for `poetry_sft.model.memory`, the budget check, a command.

    poetry-sft plan method=full hardware=4gb       # print the plan, train nothing

A run whose plan exceeds its hardware profile is refused before anything loads, with the breakdown and
fixes, unless `hardware.allow_over_budget=true`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from poetry_sft.config.schema import Batching, Precision, RunConfig, Stage, resolve_batching
from poetry_sft.errors import ConfigError, ResourceNotFoundError, command
from poetry_sft.model.memory import (
    GIB,
    Architecture,
    MemoryPlan,
    TrainingShape,
    over_budget_message,
    plan_memory,
)


def architecture(cfg: RunConfig) -> Architecture | None:
    """The model's shape without loading weights: the random-init spec, or config.json (local or cached)."""
    spec = cfg.model.random_init
    if spec is not None:
        from poetry_sft.model.random_init import qwen3_config, vocab_size

        return Architecture.from_hf_config(qwen3_config(spec, vocab_size(spec)))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model.name_or_path, revision=cfg.model.revision)
    except (OSError, ValueError):  # offline and not cached: loading the model reports that clearly
        return None
    return Architecture.from_hf_config(config)


def training_shape(cfg: RunConfig) -> TrainingShape:
    """What the GPU run will hold. On a CPU-only machine the plan assumes a bf16-capable GPU."""
    from poetry_sft.model.loading import resolve_precision

    precision = resolve_precision(cfg.train.precision)
    if precision is Precision.fp32 and cfg.train.precision is Precision.auto:
        precision = Precision.bf16
    weights = precision
    if not cfg.method.uses_adapter:
        weights = Precision.fp32  # bf16/fp16 autocast over fp32 master weights (modeling.load_model)
    settings: dict[str, Any] = dict(
        method=cfg.method.plan_kind,
        weight_dtype=weights.value,
        compute_dtype=precision.value,
        optimizer=cfg.optimizer,
        micro_batch_size=cfg.hardware.per_device_train_batch_size,
        seq_len=cfg.hardware.max_length,
        gradient_checkpointing=cfg.hardware.gradient_checkpointing,
        lora_r=cfg.method.r,
        lora_targets=tuple(cfg.method.target_modules),
        lora_dropout=cfg.method.lora_dropout,
        padded=resolve_batching(cfg) is Batching.padded,
        double_quant=cfg.method.bnb_4bit_use_double_quant,
        dora=cfg.method.use_dora,
        # label smoothing makes TRL compute the loss from full logits instead of its chunked LM head
        chunked_loss=not cfg.trainer.get("label_smoothing_factor"),
        # modeling.load_model calls peft's prepare_model_for_kbit_training on every 4-bit base
        kbit_upcast=cfg.method.quantized,
    )
    if cfg.stage.name is Stage.grpo:
        settings.update(_grpo_shape(cfg))
    return TrainingShape(**settings)


# Tokens of a GRPO prompt: the chat template's frame (~20 with Qwen3's empty think block), the request and
# a rhyme hint (~30 Qwen tokens; one per character in the demo's vocabulary), rounded up.
GRPO_PROMPT_TOKENS = 64


def _grpo_shape(cfg: RunConfig) -> dict[str, Any]:
    """What GRPO holds instead of SFT's: sequences of prompt + completion, full logits for the completion
    positions (TRL has no fused loss head for GRPO), a generation round over the whole step's completions
    (TRL's default generation_batch_size: per-device batch x accumulation), and a reference copy of the
    weights when beta > 0 on a fully trained model (an adapter's reference is the base with it disabled)."""
    hardware, stage = cfg.hardware, cfg.stage
    tokens = GRPO_PROMPT_TOKENS + stage.max_completion_length
    return {
        "seq_len": tokens,
        "chunked_loss": False,
        "loss_tokens": hardware.per_device_train_batch_size * (stage.max_completion_length + 1),
        "generation_batch": hardware.per_device_train_batch_size * hardware.gradient_accumulation_steps,
        "generation_tokens": tokens,
        "reference_weights": stage.beta > 0 and not cfg.method.uses_adapter,
        "padded": True,  # GRPO pads its batches
    }


def plan_run(cfg: RunConfig) -> tuple[MemoryPlan, Architecture, TrainingShape] | None:
    arch = architecture(cfg)
    if arch is None:
        return None
    shape = training_shape(cfg)
    return plan_memory(arch, shape), arch, shape


def check_budget(cfg: RunConfig) -> MemoryPlan | None:
    """Refuse a run that cannot fit its profile's card (before any weights load)."""
    planned = plan_run(cfg)
    if planned is None:
        return None
    plan, arch, shape = planned
    message = over_budget_message(arch, shape, cfg.hardware.vram_gib)
    if message and not cfg.hardware.allow_over_budget:
        card = f"{cfg.hardware.vram_gib:g} GiB"
        raise ConfigError(
            f"method={cfg.method.name} hardware={cfg.hardware.name} does not fit a {card} card:\n{message}\n"
            "  To try anyway (e.g. your card is bigger): hardware.allow_over_budget=true"
        )
    return plan


@command
def main(argv: list[str] | None = None) -> int:
    import argparse

    from poetry_sft.config.compose import run_config

    parser = argparse.ArgumentParser(
        prog="poetry-sft plan",
        description="The memory plan of a run (what `poetry-sft train` with the same overrides would need "
        "on the profile's card), and whether it fits. Loads no weights.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="the train command's Hydra overrides: method=full hardware=4gb recipe=...",
    )
    cfg = run_config(parser.parse_args(sys.argv[1:] if argv is None else argv).overrides)
    planned = plan_run(cfg)
    if planned is None:
        local = Path(cfg.model.name_or_path).expanduser()
        if (
            cfg.model.random_init is None and local.is_dir()
        ):  # a folder, not a model's (empty, a cut download)
            from poetry_sft.model.loading import local_model_dir_problem

            raise ResourceNotFoundError(local_model_dir_problem(local))
        raise ResourceNotFoundError(
            f"cannot read the architecture of '{cfg.model.name_or_path}' offline.\n  Fix: plan with "
            "model=qwen3_0.6b_random (Qwen3-0.6B's exact shape, no download), or download the model once"
        )
    plan, arch, shape = planned
    budget = cfg.hardware.vram_gib
    from poetry_sft.model.loading import precision_choice

    print(f"memory plan: model={cfg.model.name} method={cfg.method.name} hardware={cfg.hardware.name}")
    _, reason = precision_choice(cfg.train.precision)
    planned_for = (
        "" if reason.startswith(str(shape.compute_dtype)) else f" (planned for {shape.compute_dtype})"
    )
    print(f"precision: {reason}{planned_for}")
    verdict = over_budget_message(arch, shape, budget)  # the breakdown and the fixes
    print(
        verdict
        or f"{plan.table()}\nfits: {plan.total / GIB:.2f} GiB of a {budget:g} GiB card (5% headroom kept)"
    )
    return 0
