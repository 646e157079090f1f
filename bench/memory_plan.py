"""Print the memory plan of Qwen3-0.6B for each method x batch shape x gradient checkpointing.

    python bench/memory_plan.py           # one table per method: components (GiB) x shapes
    python bench/memory_plan.py --tables  # MemoryPlan.table() for every shape, with notes

Pure arithmetic (poetry_sft.model.memory): no model is loaded and no GPU is needed. The architecture is
Qwen3-0.6B's config, written out so that nothing is downloaded.
"""

from __future__ import annotations

import argparse

from poetry_sft.model.memory import (
    GIB,
    PHASES_HEADER,
    ROW_LABELS,
    Architecture,
    MemoryPlan,
    TrainingShape,
    plan_memory,
)


def qwen3_06b() -> Architecture:
    """Qwen3-0.6B's shape, from the config group that builds it (conf/model/qwen3_0.6b_random.yaml)."""
    from omegaconf import OmegaConf

    from poetry_sft.config.schema import RandomInitSpec
    from poetry_sft.model.random_init import qwen3_config, vocab_size
    from poetry_sft.paths import CONF_DIR

    node = OmegaConf.load(CONF_DIR / "model" / "qwen3_0.6b_random.yaml").random_init
    spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RandomInitSpec), node))
    return Architecture.from_hf_config(qwen3_config(spec, vocab_size(spec)))


METHOD_OPTIMIZERS = [
    ("qlora", "paged_adamw_8bit"),
    ("lora", "adamw_torch"),
    ("full", "adamw_torch"),
    ("full", "adamw_8bit"),
]
BATCHES = [(4, 256), (8, 512)]  # (per_device_train_batch_size, max_length)


def shapes(method: str, optimizer: str) -> list[TrainingShape]:
    return [
        TrainingShape(method, "bf16", optimizer, batch, seq_len, checkpointing)
        for batch, seq_len in BATCHES
        for checkpointing in (True, False)
    ]


def column(shape: TrainingShape) -> str:
    return (
        f"b{shape.micro_batch_size}xs{shape.seq_len} {'ckpt' if shape.gradient_checkpointing else 'no-ckpt'}"
    )


def matrix(plans: dict[str, MemoryPlan]) -> str:
    """Components as rows, shapes as columns, in GiB."""

    def row(label: str, values: list[float]) -> str:
        return f"{label:<40}" + "".join(f"{value / GIB:>16.3f}" for value in values)

    rows = [f"{'GiB':<40}" + "".join(f"{name:>16}" for name in plans)]
    for key, label in ROW_LABELS.items():
        if key == "logits":
            rows.append(PHASES_HEADER)
        rows.append(row(label, [plan.items[key] for plan in plans.values()]))
    rows.append(row("allocated (max_memory_allocated)", [plan.allocated for plan in plans.values()]))
    rows.append(row("reserved (max_memory_reserved)", [plan.reserved for plan in plans.values()]))
    rows.append(row("total on the card", [plan.total for plan in plans.values()]))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", action="store_true", help="the full table of every shape, with notes")
    args = parser.parse_args()
    arch = qwen3_06b()
    for method, optimizer in METHOD_OPTIMIZERS:
        plans = {column(s): plan_memory(arch, s) for s in shapes(method, optimizer)}
        if args.tables:
            for name, plan in plans.items():
                print(f"\n## {method} / {optimizer} / {name}\n{plan.table()}")
        else:
            print(f"\n## {method} / {optimizer}\n{matrix(plans)}")


if __name__ == "__main__":
    main()
