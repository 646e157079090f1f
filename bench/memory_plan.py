"""Print the memory plan of Qwen3-0.6B for each method x batch shape x checkpointing.

    python bench/memory_plan.py            # the tables the hardware profiles are tuned from
    python bench/memory_plan.py --summary  # one line per shape

Pure arithmetic (poetry_sft.memory): no model is loaded and no GPU is needed. The architecture is
Qwen3-0.6B's config, written out so that nothing is downloaded.
"""

from __future__ import annotations

import argparse

from poetry_sft.memory import GIB, Architecture, TrainingShape, plan_memory

QWEN3_06B = Architecture(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
)
METHOD_OPTIMIZERS = [
    ("qlora", "paged_adamw_8bit"),
    ("lora", "adamw_torch"),
    ("full", "adamw_torch"),
    ("full", "adamw_8bit"),
]
BATCHES = [(4, 256), (8, 512)]  # (per_device_train_batch_size, max_length)


def shapes() -> list[TrainingShape]:
    return [
        TrainingShape(method, "bf16", optimizer, batch, seq_len, checkpointing)
        for method, optimizer in METHOD_OPTIMIZERS
        for batch, seq_len in BATCHES
        for checkpointing in (True, False)
    ]


def title(shape: TrainingShape) -> str:
    checkpointing = "on" if shape.gradient_checkpointing else "off"
    return (
        f"{shape.method} / {shape.optimizer} / batch {shape.micro_batch_size} x seq {shape.seq_len}"
        f" / checkpointing {checkpointing}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", action="store_true", help="one line per shape instead of full tables")
    args = parser.parse_args()
    for shape in shapes():
        plan = plan_memory(QWEN3_06B, shape)
        if args.summary:
            gib = (plan.allocated / GIB, plan.reserved / GIB, plan.total / GIB)
            print(
                f"{title(shape):<70} allocated {gib[0]:6.2f}  reserved {gib[1]:6.2f}  total {gib[2]:6.2f} GiB"
            )
        else:
            print(f"\n## {title(shape)}\n{plan.table()}")


if __name__ == "__main__":
    main()
