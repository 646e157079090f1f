"""How well do trained poets rhyme? Unseen titles, two seeds, the runs' own sampling settings, unconstrained.

    python -m bench.prosody runs/demo runs/demo_hint [--best-of 1 4 8 16] [--seeds 0 1] \\
        [--titles bench/unseen_titles.txt] [--out bench/results/prosody.json]
    python -m bench.prosody --train runs/prosody [--best-of 1 8]    # train the six runs below, then measure

--train DIR trains (or, where a run finished already, keeps) the demo and its stages with the recipes'
defaults, plain and with rhyme-aware prompts, one after the other, and measures them all:

    DIR/demo        poetry-sft train recipe=demo
    DIR/demo_hint   poetry-sft train recipe=demo data.rhyme_hint=true
    DIR/rs, rs_hint poetry-sft train recipe=demo_rs init_run=DIR/demo (DIR/demo_hint)
    DIR/grpo, ...   poetry-sft train recipe=demo_grpo init_run=DIR/demo (DIR/demo_hint)

For every run and every N of --best-of, each title gets one poem per seed (the critic's best of N
samples when N > 1, all N from one generate() call), written with the run's generation settings and
prompts: a run trained with rhyme-aware prompts (data.rhyme_hint=true) is asked for a 韵部 per title (one
of the ten commonest, picked by the title) and `asked_rhyme_rate` is the share of its poems whose even
lines all rhyme in that group. Printed as a Markdown table (and written as JSON):

    layout     regulated_form_rate: a 5/7-character 绝句/律诗 shape
    rhyme      rhyme_rate: the even lines end in different characters of one 平水韵 group
    asked      asked_rhyme_rate (rhyme-aware runs only)
    listed     the share of even-line finals that are characters the prompt listed (rhyme-aware runs only)
    tones      tone_compliance of the regulated poems
    distinct-2 distinct character pairs over all poems
    rhyme chars distinct characters at the rhyme slots (even-line ends) / all of them: near 0 when every
                poem rhymes on the same pair
    eos        the share that stopped at the end token
    critic     the mean prosody critic score

The titles (bench/unseen_titles.txt) are titles of regulated poems in ../shared/data/poems.parquet that
neither the shipped sample (what the demo trains on) nor the demo's eval titles use; a run whose training
data is the sample is checked against it. Nothing here tunes anything: it measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

TITLES = Path(__file__).with_name("unseen_titles.txt")
COLUMNS = (
    ("layout", "regulated_form_rate"),
    ("rhyme", "rhyme_rate"),
    ("asked", "asked_rhyme_rate"),
    ("listed", "listed_finals"),
    ("tones", "tone_compliance"),
    ("distinct-2", "distinct_2"),
    ("rhyme chars", "distinct_finals"),
    ("eos", "eos_termination_rate"),
    ("critic", "critic_score"),
)


def read_titles(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def check_unseen(run_dir: Path, titles: list[str]) -> None:
    """A run trained on the shipped sample must not have seen any of the titles."""
    from poetry_sft.paths import SAMPLE_POEMS
    from poetry_sft.run.artifacts import load_run_config

    if load_run_config(run_dir).data.path != "sample":
        return
    seen = {json.loads(line)["title"] for line in SAMPLE_POEMS.read_text(encoding="utf-8").splitlines()}
    if overlap := sorted(set(titles) & seen):
        raise SystemExit(f"{run_dir} trained on titles of the benchmark: {overlap[:5]}")


def measure(run_dir: Path, titles: list[str], best_of: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    from poetry_sft.evaluate.generate import generate_poems, load_run, score_generated

    model, tokenizer, cfg = load_run(run_dir)
    rows = []
    for n in best_of:
        per_seed, started = [], time.perf_counter()
        for seed in seeds:
            sampling = dataclasses.replace(cfg.generation, seed=seed)
            poems = generate_poems(
                model, tokenizer, titles, cfg.data, sampling, constrain=False, critic=cfg.critic, best_of=n
            )
            per_seed.append(score_generated(poems, None, cfg.critic))
            per_seed[-1]["listed_finals"] = listed_finals(poems, cfg.data.rhyme_hint_chars)
        mean = {
            key: statistics.mean(scores[key] for scores in per_seed) if per_seed[0][key] is not None else None
            for _, key in COLUMNS
        }
        rows.append(
            {
                "run": run_dir.name,
                "rhyme_hint": cfg.data.rhyme_hint,
                "best_of": n,
                "seconds": round(time.perf_counter() - started, 1),
                **mean,
                "per_seed": per_seed,
            }
        )
        print(_row(rows[-1]), flush=True)
    return rows


def listed_finals(poems: list[Any], count: int) -> float | None:
    """For rhyme-aware prompts: the share of even-line finals that are characters the prompt listed (the
    same hint generation_prompt built: hint_chars with the title as seed). None for plain prompts."""
    from poetry_sft.poetry.critic import even_line_finals
    from poetry_sft.poetry.rhyme_hint import hint_chars

    hits = total = 0
    for poem in poems:
        if poem.rhyme_group is None:
            return None
        listed = set(hint_chars(poem.rhyme_group, count, seed=poem.title))
        finals = even_line_finals(poem.content)
        hits += sum(final in listed for final in finals)
        total += len(finals)
    return hits / total if total else 0.0


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _row(row: dict[str, Any]) -> str:
    prompts = "rhyme-aware" if row["rhyme_hint"] else "plain"
    cells = " | ".join(_cell(row[key]) for _, key in COLUMNS)
    return f"| {row['run']} | {prompts} | {row['best_of']} | {cells} |"


def table(rows: list[dict[str, Any]]) -> str:
    head = "| run | prompts | best of | " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "---|" * (3 + len(COLUMNS))
    return "\n".join([head, rule, *map(_row, rows)])


def train_runs(root: Path) -> list[Path]:
    """The six runs of --train, each trained by the command a user types (skipped where finished)."""
    import os
    import subprocess
    import sys

    from poetry_sft.run.artifacts import is_finished

    plans = {
        "demo": ["recipe=demo"],
        "demo_hint": ["recipe=demo", "data.rhyme_hint=true"],
        "rs": ["recipe=demo_rs", f"init_run={root / 'demo'}"],
        "rs_hint": ["recipe=demo_rs", f"init_run={root / 'demo_hint'}"],
        "grpo": ["recipe=demo_grpo", f"init_run={root / 'demo'}"],
        "grpo_hint": ["recipe=demo_grpo", f"init_run={root / 'demo_hint'}"],
    }
    for name, overrides in plans.items():
        run_dir = root / name
        if is_finished(run_dir):
            continue
        command = [sys.executable, "-m", "poetry_sft", "train", *overrides, f"run_dir={run_dir}"]
        print("$", " ".join(command[1:]), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, env=os.environ, stdout=subprocess.DEVNULL)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    return [root / name for name in plans]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished run directories")
    parser.add_argument("--train", type=Path, help="train the demo and its stages into this folder first")
    parser.add_argument("--titles", type=Path, default=TITLES)
    parser.add_argument("--best-of", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, help="write every row (and every seed's scores) as JSON")
    args = parser.parse_args()
    if args.train:
        args.runs += train_runs(args.train)
    if not args.runs:
        parser.error("give run directories, or --train DIR")
    titles = read_titles(args.titles)
    print(f"{len(titles)} unseen titles x {len(args.seeds)} seeds, unconstrained, each run's own settings\n")
    print(table([]))
    rows = []
    for run_dir in args.runs:
        check_unseen(run_dir, titles)
        rows += measure(run_dir, titles, args.best_of, args.seeds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        import sys

        payload = {"command": "python -m bench.prosody " + " ".join(sys.argv[1:]), "rows": rows}
        args.out.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
