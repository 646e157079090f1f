"""Do the poetry metrics separate real poems from damaged ones? Prints one table.

    python -m bench.bench_metrics [--data ../shared/data/poems.parquet] [--sample 2000] [--seed 0]

Takes a seeded sample of real 绝句/律诗 from the corpus and scores it, the same poems with their
characters shuffled, with the last line removed, and random characters in the same layout (the prosody
critic's mean score too, at its default weights, each poem judged against its real form). Copy
rates are against every other poem of the corpus (the held-out sample's own rows excluded; the
corpus has exact duplicates, so real poems do not score zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
import unicodedata
from pathlib import Path

from poetry_sft import poetry
from poetry_sft.config.schema import CriticConfig
from poetry_sft.poetry.copying import CopyIndex

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "poems.parquet"
COLUMNS = {
    "format_accuracy": "format",
    "rhyme_rate": "rhyme",
    "tone_compliance": "tone",
    "tone_pass_rate": "tone pass",
    "distinct_1": "dist-1",
    "distinct_2": "dist-2",
    "ngram_copy_rate": "7-gram copy",
    "line_copy_rate": "line copy",
    "critic_score": "critic",
}


def ljust(text: str, width: int) -> str:
    """Left-justify by terminal columns: a Chinese character takes two."""
    columns = sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)
    return text + " " * (width - columns)


def lay_out(lines: list[str]) -> str:
    """Lines in the corpus layout: "，" after odd lines, "。" after even ones, a couplet per text line."""
    couplets = ["，".join(lines[i : i + 2]) + "。" for i in range(0, len(lines), 2)]
    return "\n".join(couplets)


def shuffled(poem: str, rng: random.Random) -> str:
    chars = [char for char in poem if poetry.is_han(char)]
    rng.shuffle(chars)
    replacement = iter(chars)
    return "".join(next(replacement) if poetry.is_han(char) else char for char in poem)


def truncated(poem: str) -> str:
    return lay_out(poetry.split_lines(poem)[:-1])


def random_characters(poem: str, pool: list[str], rng: random.Random) -> str:
    """Characters drawn from `pool` (so with its frequencies), in the poem's layout."""
    return "".join(rng.choice(pool) if poetry.is_han(char) else char for char in poem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the corpus lives outside the repo; pass --data)")
        return 0
    import pandas as pd

    start = time.perf_counter()
    corpus = pd.read_parquet(args.data, columns=["content"])["content"]
    rng = random.Random(args.seed)
    order = list(range(len(corpus)))
    rng.shuffle(order)
    held_out = []
    for row in order:
        if poetry.classify_form(corpus.iloc[row]) != poetry.OTHER_FORM:
            held_out.append(row)
            if len(held_out) == args.sample:
                break
    poems = corpus.iloc[held_out].tolist()
    forms = [poetry.classify_form(poem) for poem in poems]
    index = CopyIndex(corpus.drop(corpus.index[held_out]).tolist())

    pool = [char for poem in poems for char in poem if poetry.is_han(char)]
    weights = dataclasses.asdict(CriticConfig())  # the prosody critic at its default weights
    # name -> (poems, the form each was "asked" to be: the real poem's form)
    rows = {
        "real": (poems, forms),
        "shuffled": ([shuffled(poem, rng) for poem in poems], forms),
        "truncated": ([truncated(poem) for poem in poems], forms),
        "random chars": ([random_characters(poem, pool, rng) for poem in poems], forms),
    }
    for form in poetry.FORMS:  # the real sample again, by form
        subset = [poem for poem, poem_form in zip(poems, forms, strict=True) if poem_form == form]
        rows[f"real {form}"] = (subset, [form] * len(subset))

    print(f"{len(poems)} 绝句/律诗 (seed {args.seed}) held out of {len(corpus):,} poems in {args.data.name}")
    print(" " * 20 + "".join(f"{title:>12}" for title in COLUMNS.values()))
    for name, (row_poems, row_forms) in rows.items():
        scores = poetry.score_poems(row_poems, row_forms, reference=index, critic_weights=weights)
        cells = ("—" if scores[key] is None else f"{scores[key]:.3f}" for key in COLUMNS)
        label = f"{name} ({len(row_poems)})" if name.startswith("real ") else name
        print(ljust(label, 20) + "".join(f"{cell:>12}" for cell in cells))
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
