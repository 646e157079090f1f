"""Should the repetition penalty spare punctuation? Measured on a trained run, over its eval titles.

    python bench/repetition_penalty.py runs/<run>      # e.g. the demo: poetry-sft train recipe=demo

Writes every title several times with the run's sampling settings (fixed seed) under three penalties:
the plain transformers penalty (which also punishes the ，and 。 every line repeats), the same penalty
sparing punctuation-only tokens (generation.penalize_punctuation=false), and no penalty; prints the
layout rate, end-token rate, distinct-2 and repeated-line rate of each. Prints numbers, decides nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poetry_sft.evaluate.generate import generate_poems, load_run  # noqa: E402
from poetry_sft.poetry import score_poems  # noqa: E402

ROWS = ("regulated_form_rate", "eos_termination_rate", "distinct_2", "repeated_line_rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-title", type=int, default=3, help="poems per title (default 3)")
    parser.add_argument("--penalty", type=float, default=None, help="default: the run's repetition_penalty")
    args = parser.parse_args()

    model, tokenizer, cfg = load_run(args.run_dir)
    titles = cfg.generation.eval_titles or ["春夜喜雨", "登高", "静夜思", "山居秋暝"]
    titles = [t for t in titles for _ in range(args.per_title)]
    penalty = args.penalty or cfg.generation.repetition_penalty
    variants = {
        f"{penalty} on every token": dict(repetition_penalty=penalty, penalize_punctuation=True),
        f"{penalty}, punctuation spared": dict(repetition_penalty=penalty, penalize_punctuation=False),
        "1.0 (none)": dict(repetition_penalty=1.0, penalize_punctuation=True),
    }
    results = {}
    for name, change in variants.items():
        sampling = dataclasses.replace(cfg.generation, **change)
        start = time.perf_counter()
        poems = generate_poems(
            model, tokenizer, titles, cfg.data, sampling, max_new_tokens=sampling.max_new_tokens
        )
        scores = score_poems([p.content for p in poems], stopped_at_eos=[p.stopped_at_eos for p in poems])
        results[name] = (scores, time.perf_counter() - start)

    print(
        f"\nRepetition penalty, {args.run_dir}: {len(titles)} poems per variant "
        f"({len(set(titles))} titles x {args.per_title}), seed {cfg.generation.seed}, "
        f"temperature {cfg.generation.temperature}, top_p {cfg.generation.top_p}\n"
    )
    print("| metric | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for row in ROWS:
        cells = [f"{scores[row]:.3f}" if scores[row] is not None else "–" for scores, _ in results.values()]
        print(f"| {row} | " + " | ".join(cells) + " |")
    print("| seconds | " + " | ".join(f"{seconds:.1f}" for _, seconds in results.values()) + " |")


if __name__ == "__main__":
    main()
