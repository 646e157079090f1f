"""Build poetry_sft/poetry/rhyme_chars.json: each level-tone 平水韵 group's commonest rhyme characters.

    python -m bench.rhyme_chars [--poems ../shared/data/poems.parquet]

Counts, over the regulated poems (绝句/律诗 by shape) whose even lines rhyme in one level-tone group,
how often each character ends an even line of that group. Rhyme-aware prompts (data.rhyme_hint) list a few
of these at generation, where there is no poem to take the characters from. The 平水韵 table itself has
no frequencies (its order is the rhyme books', not usage), hence the corpus count. Simplified characters,
as the corpus and the models write them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from poetry_sft.poetry import FORMS, classify_form, level_rhyme_groups, rhyme_groups
from poetry_sft.poetry.critic import even_line_finals

OUT = Path(__file__).resolve().parents[1] / "poetry_sft" / "poetry" / "rhyme_chars.json"
KEEP = 40  # characters kept per group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poems", type=Path, default=Path("../shared/data/poems.parquet"))
    args = parser.parse_args()
    import pyarrow.parquet as pq

    started = time.perf_counter()
    contents = pq.read_table(args.poems, columns=["content"]).column("content").to_pylist()
    level = level_rhyme_groups()
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    rhyming = 0
    for content in contents:
        if classify_form(content) not in FORMS:
            continue
        finals = even_line_finals(content)
        shared = frozenset.intersection(*(rhyme_groups(c) for c in finals)) & level if finals else frozenset()
        if len(shared) != 1:  # not rhyming, or ambiguous between groups (polyphones): not counted
            continue
        rhyming += 1
        (group,) = shared
        counts[group].update(finals)
    table = {group: [char for char, _ in counts[group].most_common(KEEP)] for group in sorted(level)}
    poems = {group: sum(counts[group].values()) for group in sorted(level)}  # rhyme slots, a usage count
    OUT.write_text(
        json.dumps(
            {
                "source": f"{args.poems.name}: {rhyming} rhyming regulated poems",
                "rhymes_per_group": poems,
                "groups": table,
            },
            ensure_ascii=False,
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    seconds = time.perf_counter() - started
    print(f"{rhyming} rhyming regulated poems of {len(contents)}; wrote {OUT} in {seconds:.0f} s")
    for group, chars in table.items():
        print(group, "".join(chars[:12]))


if __name__ == "__main__":
    main()
