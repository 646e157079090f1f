"""Does bf16 training update the weights as fp32 training does? Prints one row per method and setup.

    python -m bench.precision_updates [--steps 5] [--methods full,lora,qlora]

The tiny model at Qwen3's init scale (`model.random_init.initializer_range=0.02`), the shipped rates
(full 2e-5, adapters 2e-4), the 8 GB profile's optimizer, no warmup. Each setup trains `--steps` steps
from the same start as an fp32 reference run and is compared with it: the fraction of trainable
elements that changed, the fraction of RMSNorm weights of which every element moved, and the cosine
between the two updates. "bf16 weights" is what training did before fp32 master weights / adapters:
the trainable weights stored in bf16, so the optimizer writes straight into bf16.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# A run of a few CPU seconds on the shipped sample (the 8 GB profile's optimizer, as tests/conftest.py).
TINY_RUN = [
    "model=tiny",
    "model.random_init.initializer_range=0.02",
    "hardware=8gb",
    "data.eval_size=4",
    "hardware.per_device_train_batch_size=4",
    "hardware.gradient_accumulation_steps=1",
    "hardware.max_length=96",
    "train.warmup_ratio=0",
    "train.logging_steps=1000",
    "train.eval_steps=1000",
    "train.save_steps=1000",
]


def trained_update(overrides: list[str], run_dir: Path, bf16_weights: bool = False):
    import torch

    from poetry_sft.config.compose import run_config
    from poetry_sft.train.sft import build_trainer

    cfg = run_config(overrides)
    trainer = build_trainer(cfg, run_dir)
    params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    if bf16_weights:
        for p in params.values():
            p.data = p.data.to(torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in params.items()}
    trainer.train()
    return {n: p.detach().float() - before[n] for n, p in params.items()}


def agreement(update, reference) -> dict[str, float]:
    import torch

    flat, ref = (torch.cat([u[n].flatten() for n in sorted(u)]) for u in (update, reference))
    norms = [n for n in update if "norm" in n]
    moved = sum(bool((update[n] != 0).all()) for n in norms)
    return {
        "changed": round((flat != 0).float().mean().item(), 4),
        "norms_moved": round(moved / len(norms), 3) if norms else None,
        "cosine": round(torch.nn.functional.cosine_similarity(flat, ref, dim=0).item(), 4),
    }


def main() -> None:
    from poetry_sft.paths import SAMPLE_POEMS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default="full,lora,qlora")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="precision_updates-"))
    os.environ.setdefault("POETRY_SFT_CACHE", str(tmp / "cache"))
    results = []
    for method in args.methods.split(","):
        base = [f"method={method}", *TINY_RUN, f"train.max_steps={args.steps}", f"data.path={SAMPLE_POEMS}"]
        reference = trained_update([*base, "train.precision=fp32"], tmp / f"{method}-fp32")
        for setup, bf16_weights in (("bf16 autocast, fp32 weights", False), ("bf16 weights", True)):
            update = trained_update([*base, "train.precision=bf16"], tmp / f"{method}-{setup}", bf16_weights)
            results.append({"method": method, "setup": setup, **agreement(update, reference)})
    print(f"\n{args.steps} steps vs fp32 from the same start (tiny model, initializer_range 0.02)")
    print(f"{'method':<7}{'setup':<30}{'changed':>9}{'norms moved':>13}{'cosine':>9}")
    for r in results:
        norms = "-" if r["norms_moved"] is None else f"{r['norms_moved']:.3f}"
        print(f"{r['method']:<7}{r['setup']:<30}{r['changed']:>9.4f}{norms:>13}{r['cosine']:>9.4f}")


if __name__ == "__main__":
    main()
