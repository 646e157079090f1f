"""Merge a LoRA/QLoRA run's adapter into its base: one standalone model directory for plain transformers.

    poetry-sft merge runs/<run> [--out DIR]        # default: runs/<run>/merged

The result loads with `AutoModelForCausalLM.from_pretrained(DIR)` (no peft, no bitsandbytes) and
generates as the adapter on the base does; `poetry-sft generate --model DIR` uses it with the
run's prompt setup (system prompt, template), which DIR carries in poetry_sft_run.yaml.

QLoRA adapters are merged into the *unquantised* base (its saved dtype, bf16 for Qwen3-0.6B; fp32
for the tiny test model). Merging into the 4-bit weights would dequantise, add the low-rank update
and round it back to NF4, losing much of the update in the rounding, and the result could only be
loaded with bitsandbytes. The price: the adapter was trained against the 4-bit-rounded base, so the
merged model differs from the trained one by the base's quantisation error. So that nobody ships an
untested merge, `merge` compares the merged model with the trained one (the adapter on the base it
trained on) on a few prompts, prints greedy agreement and the logit difference, and writes them to
`<out>/merge_check.json`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from poetry_sft import atomic
from poetry_sft.config.schema import RunConfig
from poetry_sft.errors import RunDirError, command, ensure_writable, write_failure
from poetry_sft.run import artifacts
from poetry_sft.run.model_card import write_card

MERGED_DIR = "merged"
CHECK_FILE = "merge_check.json"
CHECK_TITLES = ("春夜喜雨", "登高", "静夜思", "山居秋暝", "江雪", "月夜")


def compare_models(trained: Any, merged: Any, tokenizer: Any, cfg: RunConfig) -> dict[str, Any]:
    """How far the merged model is from the trained one: greedy poems that agree, and the next-token
    logits' difference over the prompts (max and mean absolute, on the trained model's scale)."""
    import dataclasses

    import torch

    from poetry_sft.data.prompts import generation_prompt
    from poetry_sft.evaluate.generate import generate_poems

    greedy = dataclasses.replace(cfg.generation, do_sample=False, form=None, rhyme=False)
    titles = list(CHECK_TITLES)
    first, second = (
        [p.content for p in generate_poems(m, tokenizer, titles, cfg.data, greedy, constrain=False)]
        for m in (trained, merged)
    )
    max_diff = mean_diff = 0.0
    with torch.no_grad():
        for title in titles:
            text = generation_prompt(tokenizer, cfg.data, title, cfg.generation.form)
            ids = tokenizer(text, return_tensors="pt").input_ids
            a, b = (m(input_ids=ids.to(m.device)).logits.float().cpu() for m in (trained, merged))
            max_diff = max(max_diff, (a - b).abs().max().item())
            mean_diff += (a - b).abs().mean().item() / len(titles)
    return {
        "prompts": len(titles),
        "greedy_poems_agreeing": sum(x == y for x, y in zip(first, second, strict=True)),
        "max_abs_logit_diff": round(max_diff, 4),
        "mean_abs_logit_diff": round(mean_diff, 4),
        "method": cfg.method.name,
        "quantized_base": cfg.method.quantized,
    }


def describe_check(check: dict[str, Any]) -> str:
    return (
        f"merged vs trained model on {check['prompts']} prompts: {check['greedy_poems_agreeing']}/"
        f"{check['prompts']} greedy poems identical, logits differ by max {check['max_abs_logit_diff']:g}, "
        f"mean {check['mean_abs_logit_diff']:g}"
        + (
            " (QLoRA: the adapter was trained on the 4-bit base; the merged model has the unquantised one)"
            if check["quantized_base"]
            else ""
        )
    )


def merged_model(run_dir: Path, compare: bool = True) -> tuple[Any, Any, RunConfig, dict[str, Any] | None]:
    """A finished run's model as one plain transformers model, in memory: a LoRA/QLoRA adapter merged into
    its (unquantised) base, or a full run's model as saved. Returns (model, tokenizer, cfg, check): `check`
    compares the merged model with the trained one (None for full runs, which need no merging, and
    without `compare`: it writes poems with both models, seconds on CPU).
    Used by `merge` (saves it) and `export` (writes it as GGUF)."""
    model_dir = run_dir / artifacts.MODEL_DIR
    from poetry_sft.evaluate.generate import load_run

    if not (model_dir / "adapter_config.json").is_file():
        if (model_dir / "config.json").is_file():
            model, tokenizer, cfg = load_run(run_dir)
            return model, tokenizer, cfg, None
        if not model_dir.is_dir() and artifacts.is_run_dir(run_dir):
            raise artifacts.unfinished_error(run_dir)
        raise RunDirError(f"{run_dir} has no saved adapter ({artifacts.MODEL_DIR}/adapter_config.json)")
    model, tokenizer, cfg = load_run(run_dir, dequantized_base=True)
    merged = model.merge_and_unload()  # type: ignore[operator]  # a PeftModel (load_run types it as its base)
    check_tied_embeddings(merged)
    if not compare:
        return merged, tokenizer, cfg, None
    trained, _, _ = load_run(run_dir)  # the adapter on the base it trained on (4-bit for QLoRA)
    check = compare_models(trained, merged, tokenizer, cfg)
    del trained
    return merged, tokenizer, cfg, check


def check_tied_embeddings(model: Any) -> None:
    """Qwen3-0.6B ties lm_head to embed_tokens: one matrix. A merge that unties them (an adapter on one of
    the two) would leave a model whose saved file keeps only the embedding, silently losing the update."""
    config = model.config.get_text_config()
    if getattr(config, "tie_word_embeddings", False):
        embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        if embedding.data_ptr() != head.data_ptr():
            raise RunDirError(
                "the merged model's lm_head is no longer its embedding matrix (tie_word_embeddings=True): "
                "the adapter trained one of the two. Fix: train without embed_tokens/lm_head in "
                "method.target_modules"
            )


def merge_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write the merged model and the run's tokenizer to `out` (never into a non-empty directory)."""
    out = out or run_dir / MERGED_DIR
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(
            f"{out} exists and is not empty; it is never overwritten. Fix: choose another --out"
        )
    if (
        not (run_dir / artifacts.MODEL_DIR / "adapter_config.json").is_file()
        and (run_dir / artifacts.MODEL_DIR / "config.json").is_file()
    ):
        raise RunDirError(
            f"{run_dir} is a full fine-tuning run: {run_dir / artifacts.MODEL_DIR} already is a "
            "standalone model; load it with AutoModelForCausalLM.from_pretrained. Only LoRA/QLoRA runs "
            "need merging"
        )
    ensure_writable(out, "the merged model", "--out DIR")
    merged, tokenizer, cfg, check = merged_model(run_dir)
    try:
        if out.exists():
            out.rmdir()  # empty, checked above
        # Written beside the target and renamed (the package's one atomic-directory helper): an interrupted
        # merge never leaves a half model at `out`.
        with atomic.staged_directory(out, complete_marker=CHECK_FILE) as staging:
            merged.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            atomic.write_json(staging / CHECK_FILE, check)
            write_card(staging, run_dir, cfg, "merged")
            # The prompt setup (system prompt, template, style) and sampling travel with the model
            OmegaConf.save(OmegaConf.structured(cfg), staging / artifacts.RUN_CONFIG_IN_MODEL)
    except Exception as err:  # a full disk, a read-only folder: one message (the staging is gone)
        if failure := write_failure(out, err, "the merged model", "--out DIR"):
            raise failure from err
        raise
    return out


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poetry-sft merge", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished LoRA/QLoRA run directory (runs/...)")
    parser.add_argument("--out", type=Path, help=f"where to write the model (default RUN_DIR/{MERGED_DIR})")
    args = parser.parse_args(argv)
    out = merge_run(args.run_dir, args.out)
    print(describe_check(json.loads((out / CHECK_FILE).read_text(encoding="utf-8"))))
    print(
        f"merged model written to {out}; generate with it (the run's prompt setup is in "
        f"{artifacts.RUN_CONFIG_IN_MODEL} there):\n"
        f"  poetry-sft generate --model {shlex.quote(str(out))} --title 春夜喜雨"
    )
    return 0
