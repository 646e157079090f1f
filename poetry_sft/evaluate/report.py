"""Before and after: the fine-tuned model and its base write on the same titles, and both are scored.

    poetry-sft report runs/<run> [--title T ... | --titles-file F] [--per-title N] [--best-of N]

Writes `<run>/eval_report.json` (settings, both models' `score_poems` metrics, every poem) and
`<run>/eval_report.md` (a metric table and a few poems side by side). Titles: the flags, else the
run's `generation.eval_titles`, else a built-in set of classic titles. Sampling is the run's
`generation` config, the same seed for both models, and never constrained: the report measures what
each model writes on its own (`generation.form`, if set, is what format_accuracy is measured against).

The base is the adapter switched off (`disable_adapter()`) for LoRA/QLoRA runs, and the base model
reloaded for full fine-tuning runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from poetry_sft import atomic
from poetry_sft.errors import ConfigError, RunDirError, command
from poetry_sft.evaluate.generate import (
    Poem,
    generate_poems,
    load_model_dir,
    load_run,
    read_titles,
    score_generated,
)
from poetry_sft.model.loading import resolve_model_path

REPORT_JSON = "eval_report.json"
REPORT_MD = "eval_report.md"
DEFAULT_TITLES = ("春夜喜雨", "登高", "静夜思", "山居秋暝", "送友人", "秋思", "江雪", "月夜")
SAMPLE_POEMS = 4  # titles shown side by side in the Markdown report
# Rows of the Markdown table (the JSON has every metric).
TABLE_METRICS = (
    "critic_score",
    "format_accuracy",
    "regulated_form_rate",
    "rhyme_rate",
    "asked_rhyme_rate",
    "tone_compliance",
    "tone_pass_rate",
    "distinct_2",
    "distinct_finals",
    "repeated_line_rate",
    "eos_termination_rate",
    "think_leak_rate",
    "non_chinese_rate",
)


def evaluate_run(
    run_dir: Path, titles: list[str] | None = None, per_title: int = 1, best_of: int | None = None
) -> dict[str, Any]:
    """Both models' poems and scores on the same prompts, as the JSON report. `best_of` (default: the
    run's generation.best_of) > 1: each model's poem is the prosody critic's best of that many."""
    model, tokenizer, cfg = load_run(run_dir)
    titles = list(titles or cfg.generation.eval_titles or DEFAULT_TITLES)
    prompts = [title for title in titles for _ in range(per_title)]
    n = cfg.generation.best_of if best_of is None else best_of

    def write(with_model: Any) -> list[Poem]:
        return generate_poems(
            with_model,
            tokenizer,
            prompts,
            cfg.data,
            cfg.generation,
            constrain=False,
            critic=cfg.critic,
            best_of=n,
        )

    from peft import PeftModel

    finetuned = write(model)
    if isinstance(model, PeftModel):  # the base is the same weights with the adapter switched off
        with model.disable_adapter():
            base = write(model)
    else:
        del model  # one 0.6B model in memory at a time
        base = write(load_model_dir(resolve_model_path(cfg.model)))

    def scores(poems: list[Poem]) -> dict[str, Any]:
        return score_generated(poems, cfg.generation.form, cfg.critic)

    return {
        "run_dir": str(run_dir),
        "method": cfg.method.name,
        "base_model": cfg.model.name_or_path,
        "titles": titles,
        "per_title": per_title,
        "best_of": n,
        "sampling": dataclasses.asdict(cfg.generation),
        "scores": {"base": scores(base), "finetuned": scores(finetuned)},
        "poems": [
            {"title": b.title, "base": dataclasses.asdict(b), "finetuned": dataclasses.asdict(f)}
            for b, f in zip(base, finetuned, strict=True)
        ],
    }


def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


SAMPLE_CHARS = 160  # a 七言律诗 is 67; longer output is rambling, shown in full only in the JSON


def _poem_cell(text: str) -> str:
    text = text[:SAMPLE_CHARS] + "…" if len(text) > SAMPLE_CHARS else text
    return (text or "(empty)").replace("|", "\\|").replace("\n", "<br>")


def to_markdown(report: dict[str, Any]) -> str:
    base, tuned = report["scores"]["base"], report["scores"]["finetuned"]
    sampling = report["sampling"]
    decoding = (
        f"sampling (temperature {sampling['temperature']}, top_p {sampling['top_p']}, "
        f"top_k {sampling['top_k']}, seed {sampling['seed']})"
        if sampling["do_sample"]
        else "greedy decoding"
    )
    lines = [
        f"# Evaluation report: {Path(report['run_dir']).name}",
        "",
        f"Base `{report['base_model']}` vs the {report['method']} fine-tuned model: {base['n_poems']} poems "
        f"each on the same {len(report['titles'])} titles, {decoding}, repetition penalty "
        f"{sampling['repetition_penalty']}, at most {sampling['max_new_tokens']} new tokens, unconstrained"
        + (
            f", each poem the prosody critic's best of {report['best_of']}. "
            if report.get("best_of", 1) > 1
            else ". "
        )
        + f"Requested form: {sampling['form'] or 'none (format_accuracy not measured)'}. "
        "Metrics: `poetry_sft.poetry.score_poems`; every poem is in eval_report.json.",
        "",
        "| metric | base | fine-tuned |",
        "|---|---|---|",
        *(f"| {key} | {_cell(base[key])} | {_cell(tuned[key])} |" for key in TABLE_METRICS),
        "",
        "## Sample poems",
        "",
        "| title | base | fine-tuned |",
        "|---|---|---|",
    ]
    for pair in report["poems"][: SAMPLE_POEMS * report["per_title"] : report["per_title"]]:
        base_poem, tuned_poem = _poem_cell(pair["base"]["content"]), _poem_cell(pair["finetuned"]["content"])
        lines.append(f"| {pair['title']} | {base_poem} | {tuned_poem} |")
    return "\n".join(lines) + "\n"


def write_report(
    run_dir: Path,
    titles: list[str] | None = None,
    per_title: int = 1,
    out_dir: Path | None = None,
    best_of: int | None = None,
) -> tuple[Path, Path]:
    """Evaluate and write the two report files (refusing to replace existing ones)."""
    out_dir = out_dir or run_dir
    paths = out_dir / REPORT_JSON, out_dir / REPORT_MD
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise RunDirError(
            f"{', '.join(existing)} already exist and are never overwritten. "
            "Fix: move them away, or write elsewhere with --out-dir DIR"
        )
    report = evaluate_run(run_dir, titles, per_title, best_of)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(paths[0], report)
    paths[1].write_text(to_markdown(report), encoding="utf-8")
    return paths


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poetry-sft report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory (runs/...)")
    parser.add_argument("--title", action="append", default=[], help="title/theme; repeat for more")
    parser.add_argument("--titles-file", type=Path, help="titles, one per line (or .jsonl with 'title')")
    parser.add_argument("--per-title", type=int, default=1, help="poems per title and model (default 1)")
    parser.add_argument("--out-dir", type=Path, help="where the report files go (default: the run directory)")
    parser.add_argument(
        "--best-of",
        type=int,
        help="each model's poem is the prosody critic's best of N samples (default: generation.best_of)",
    )
    args = parser.parse_args(argv)
    titles = args.title + (read_titles(args.titles_file) if args.titles_file else [])
    for flag, value in (("--per-title", args.per_title), ("--best-of", args.best_of)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} must be at least 1")
    json_path, md_path = write_report(
        args.run_dir, titles or None, args.per_title, args.out_dir, args.best_of
    )
    print(f"wrote {json_path} and {md_path}")
    return 0
