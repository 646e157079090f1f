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
trained on): the logits of six prompts, each followed by a classical poem (one forward pass per model
and prompt: where the next token would differ, and by how much the logits do), printed and written to
`<out>/merge_check.json` with the seconds each part took. `--poems N` also writes N greedy poems
with both models and counts the identical ones: two full generations per poem, the slow part.

At Qwen3-0.6B's shape on a 2-core CPU (a 2-step LoRA run of the random real-shape model, bf16 on disk;
`python -m bench.merge_timing`, load average ~4.6, docs/real-size.md): `merge` took 50 s wall, of which
loading and merging 12.5 s, the logit check 34 s, saving the 1.19 GB model 0.6 s; `--poems 1` added
238 s for its one poem (two greedy generations of up to 128 tokens). The merged weights are rounded to
the base's bf16, so even a LoRA merge is not bit-exact there: max |Δlogit| 0.067, the same next token at
94.9% of the 295 positions (a random model's logits are near-tied), the one greedy poem not identical.
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
# The check's prompts, each followed by a classical poem: the logits are compared where the model writes.
CHECK_POEMS = {
    "春夜喜雨": "好雨知时节，当春乃发生。\n随风潜入夜，润物细无声。",
    "登高": "风急天高猿啸哀，渚清沙白鸟飞回。\n无边落木萧萧下，不尽长江滚滚来。",
    "静夜思": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "山居秋暝": "空山新雨后，天气晚来秋。\n明月松间照，清泉石上流。",
    "江雪": "千山鸟飞绝，万径人踪灭。\n孤舟蓑笠翁，独钓寒江雪。",
    "月夜": "今夜鄜州月，闺中只独看。\n遥怜小儿女，未解忆长安。",
}
CHECK_TITLES = tuple(CHECK_POEMS)


def compare_models(
    trained: Any, merged: Any, tokenizer: Any, cfg: RunConfig, poems: int = 0
) -> dict[str, Any]:
    """How far the merged model is from the trained one, on the check's prompts and poems (teacher-forced):
    the share of positions whose most likely next token is the same, and the logits' difference (max and
    mean absolute, on the trained model's scale). With `poems`, also that many greedy poems written by
    each model, and how many are identical."""
    import time

    import torch

    from poetry_sft.data.prompts import generation_prompt

    started = time.perf_counter()
    max_diff = mean_diff = 0.0
    agreeing = positions = 0
    with torch.no_grad():
        for title, poem in CHECK_POEMS.items():
            text = generation_prompt(tokenizer, cfg.data, title, cfg.generation.form) + poem
            ids = tokenizer(text, return_tensors="pt").input_ids
            a, b = (m(input_ids=ids.to(m.device)).logits.float().cpu()[0] for m in (trained, merged))
            max_diff = max(max_diff, (a - b).abs().max().item())
            mean_diff += (a - b).abs().mean().item() / len(CHECK_POEMS)
            agreeing += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += a.shape[0]
    check: dict[str, Any] = {
        "prompts": len(CHECK_POEMS),
        "positions": positions,
        "next_token_agreement": round(agreeing / positions, 4),
        "max_abs_logit_diff": round(max_diff, 4),
        "mean_abs_logit_diff": round(mean_diff, 4),
        "greedy_poems": poems,
        "greedy_poems_agreeing": None,
        "method": cfg.method.name,
        "quantized_base": cfg.method.quantized,
        "seconds": {"logit_check": round(time.perf_counter() - started, 1)},
    }
    if poems:
        started = time.perf_counter()
        check["greedy_poems_agreeing"] = _identical_greedy_poems(trained, merged, tokenizer, cfg, poems)
        check["seconds"]["poem_check"] = round(time.perf_counter() - started, 1)
    return check


def _identical_greedy_poems(trained: Any, merged: Any, tokenizer: Any, cfg: RunConfig, poems: int) -> int:
    import dataclasses

    from poetry_sft.evaluate.generate import generate_poems

    greedy = dataclasses.replace(cfg.generation, do_sample=False, form=None, rhyme=False)
    titles = [CHECK_TITLES[i % len(CHECK_TITLES)] for i in range(poems)]
    first, second = (
        [p.content for p in generate_poems(m, tokenizer, titles, cfg.data, greedy, constrain=False)]
        for m in (trained, merged)
    )
    return sum(x == y for x, y in zip(first, second, strict=True))


def describe_check(check: dict[str, Any]) -> str:
    poems = (
        f"; {check['greedy_poems_agreeing']}/{check['greedy_poems']} greedy poems identical"
        if check.get("greedy_poems")
        else ""
    )
    seconds = ", ".join(
        f"{part.replace('_', ' ')} {value:g} s" for part, value in check.get("seconds", {}).items()
    )
    return (
        f"merged vs trained model on {check['prompts']} prompts with a poem each ({check['positions']} "
        f"positions): the same next token at {check['next_token_agreement']:.2%} of them, logits differ "
        f"by max {check['max_abs_logit_diff']:g}, mean {check['mean_abs_logit_diff']:g}{poems}"
        + (
            " (QLoRA: the adapter was trained on the 4-bit base; the merged model has the unquantised one)"
            if check["quantized_base"]
            else ""
        )
        + (f"\ntook: {seconds}" if seconds else "")
    )


def merged_model(
    run_dir: Path, compare: bool = True, poems: int = 0
) -> tuple[Any, Any, RunConfig, dict[str, Any] | None]:
    """A finished run's model as one plain transformers model, in memory: a LoRA/QLoRA adapter merged into
    its (unquantised) base, or a full run's model as saved. Returns (model, tokenizer, cfg, check): `check`
    compares the merged model with the trained one, which it loads a second time (see compare_models;
    `poems` greedy poems too). None for full runs, which need no merging, and without `compare`.
    Used by `merge` (saves it) and `export` (writes it as GGUF)."""
    import time

    model_dir = run_dir / artifacts.MODEL_DIR
    from poetry_sft.evaluate.generate import load_run

    if not (model_dir / "adapter_config.json").is_file():
        if (model_dir / "config.json").is_file():
            model, tokenizer, cfg = load_run(run_dir)
            return model, tokenizer, cfg, None
        if not model_dir.is_dir() and artifacts.is_run_dir(run_dir):
            raise artifacts.unfinished_error(run_dir)
        raise RunDirError(f"{run_dir} has no saved adapter ({artifacts.MODEL_DIR}/adapter_config.json)")
    started = time.perf_counter()
    model, tokenizer, cfg = load_run(run_dir, dequantized_base=True)
    merged = model.merge_and_unload()  # type: ignore[operator]  # a PeftModel (load_run types it as its base)
    check_tied_embeddings(merged)
    if not compare:
        return merged, tokenizer, cfg, None
    merge_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trained, _, _ = load_run(run_dir)  # the adapter on the base it trained on (4-bit for QLoRA)
    load_seconds = time.perf_counter() - started
    check = compare_models(trained, merged, tokenizer, cfg, poems)
    check["seconds"] = {
        "load_and_merge": round(merge_seconds, 1),
        "load_trained": round(load_seconds, 1),
        **check["seconds"],
    }
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


def merge_run(run_dir: Path, out: Path | None = None, poems: int = 0) -> Path:
    """Write the merged model and the run's tokenizer to `out` (never into a non-empty directory), with the
    check (`poems`: greedy poems compared too) in merge_check.json."""
    import time

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
    merged, tokenizer, cfg, check = merged_model(run_dir, poems=poems)
    assert check is not None  # an adapter run, checked above
    try:
        if out.exists():
            out.rmdir()  # empty, checked above
        # Written beside the target and renamed (the package's one atomic-directory helper): an interrupted
        # merge never leaves a half model at `out`.
        with atomic.staged_directory(out, complete_marker=CHECK_FILE) as staging:
            started = time.perf_counter()
            merged.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            check["seconds"]["save"] = round(time.perf_counter() - started, 1)
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
    parser.add_argument(
        "--poems",
        type=int,
        default=0,
        metavar="N",
        help="also write N greedy poems with the trained and the merged model and count the identical ones "
        "(two full generations each: about 4 minutes a poem at the 0.6B shape on a 2-core CPU)",
    )
    args = parser.parse_args(argv)
    if args.poems < 0:
        parser.error("--poems must be 0 or more")
    out = merge_run(args.run_dir, args.out, args.poems)
    print(describe_check(json.loads((out / CHECK_FILE).read_text(encoding="utf-8"))))
    print(
        f"merged model written to {out}; generate with it (the run's prompt setup is in "
        f"{artifacts.RUN_CONFIG_IN_MODEL} there):\n"
        f"  poetry-sft generate --model {shlex.quote(str(out))} --title 春夜喜雨"
    )
    return 0
