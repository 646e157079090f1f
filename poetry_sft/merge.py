"""Merge a LoRA/QLoRA run's adapter into its base: one standalone model directory for plain transformers.

    python -m poetry_sft.merge runs/<run> [--out DIR]        # default: runs/<run>/merged

The result loads with `AutoModelForCausalLM.from_pretrained(DIR)` (no peft, no bitsandbytes) and
generates as the adapter on the base does; `python -m poetry_sft.generate --model DIR` uses it.

QLoRA adapters are merged into the *unquantised* base (its saved dtype, bf16 for Qwen3-0.6B; fp32
for the tiny test model). Merging into the 4-bit weights would dequantise, add the low-rank update
and round it back to NF4, losing much of the update in the rounding, and the result could only be
loaded with bitsandbytes. The price: the adapter was trained against the 4-bit-rounded base, so the
merged model differs from the trained one by the base's quantisation error (the same is true of
`python -m poetry_sft.generate`, which also puts the adapter on the unquantised base).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from poetry_sft import artifacts
from poetry_sft.errors import RunDirError, command

MERGED_DIR = "merged"


def merge_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write the merged model and the run's tokenizer to `out` (never into a non-empty directory)."""
    out = out or run_dir / MERGED_DIR
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(
            f"{out} exists and is not empty; it is never overwritten. Fix: choose another --out"
        )
    if not (run_dir / artifacts.MODEL_DIR / "adapter_config.json").is_file():
        if (run_dir / artifacts.MODEL_DIR / "config.json").is_file():
            raise RunDirError(
                f"{run_dir} is a full fine-tuning run: {run_dir / artifacts.MODEL_DIR} already is a "
                "standalone model; load it with AutoModelForCausalLM.from_pretrained. Only LoRA/QLoRA runs "
                "need merging"
            )
        raise RunDirError(f"{run_dir} has no saved adapter ({artifacts.MODEL_DIR}/adapter_config.json)")

    from poetry_sft.generate import load_run

    model, tokenizer, _ = load_run(run_dir)  # the adapter on the unquantised base, as generation uses it
    merged = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: an interrupted merge never leaves a half model at `out`.
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poetry_sft.merge", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished LoRA/QLoRA run directory (runs/...)")
    parser.add_argument("--out", type=Path, help=f"where to write the model (default RUN_DIR/{MERGED_DIR})")
    args = parser.parse_args(argv)
    out = merge_run(args.run_dir, args.out)
    print(f"merged model written to {out}; generate with it: python -m poetry_sft.generate --model {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
