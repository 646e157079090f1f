"""Score a file of poems with the poetry metrics.

    poetry-sft score poems.jsonl [--form 七言绝句] [--reference train.parquet]

Input is JSON Lines, one object per poem with a `content` field and optionally `form` (the form
that was asked for), `title`, `stopped_at_eos` (whether generation ended on the end token) and
`rhyme_group` (the 韵部 a rhyme-aware prompt asked for), as `poetry-sft generate --out` writes them; or
plain text with poems separated by blank lines. Prints the metrics of `poetry_sft.poetry.score_poems` as
JSON, with the prosody critic's mean score and parts (critic_score, critic/*) at the default weights
(CriticConfig in poetry_sft/config/schema.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from poetry_sft import poetry
from poetry_sft.config.schema import CriticConfig
from poetry_sft.data import datafiles
from poetry_sft.errors import PoetrySFTError, command
from poetry_sft.poetry.copying import CopyIndex
from poetry_sft.poetry.rhyme_hint import find_level_group


class InputError(PoetrySFTError):
    """A problem with the user's files, reported as one line without a traceback."""


def read_records(path: Path) -> list[dict[str, Any]]:
    """Poems as dicts with at least `content`, from .jsonl (or .json lines) or plain text. An empty,
    blank or non-UTF-8 file and a broken JSON line are named with the fix (poetry_sft/data/datafiles.py)."""
    if path.suffix == ".parquet":  # training data: a `content` column
        return [{"content": content} for content in read_poems(path)]
    if path.suffix in (".csv", ".tsv", ".xlsx"):
        raise InputError(
            f"{path}: score reads .jsonl (a 'content' field per line), .txt (poems separated by blank lines) "
            f'or .parquet, not {path.suffix}.\n  Fix: convert it, e.g. python -c "import pandas as pd; '
            f"pd.read_csv('{path}').to_json('poems.jsonl', orient='records', lines=True, force_ascii=False)\""
        )
    text = datafiles.read_text(path)
    if path.suffix not in {".jsonl", ".json"}:
        return [{"content": poem.strip()} for poem in text.split("\n\n") if poem.strip()]
    records = []
    for number, record in datafiles.json_lines(path, text):
        if not isinstance(record.get("content"), str):
            raise InputError(
                f"{path}:{number}: no 'content' field with the poem text (found {sorted(record)}); "
                'each line must be an object like {"content": "白日依山尽，黄河入海流。..."}.\n'
                "  Fix: rename your text field to 'content'"
            )
        records.append(record)
    return records


def read_poems(path: Path) -> list[str]:
    """Poem texts from .parquet (a `content` column, as in the training data), .jsonl or .txt."""
    if path.suffix != ".parquet":
        return [record["content"] for record in read_records(path)]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading .parquet needs pyarrow: pip install pyarrow") from None
    datafiles.check_parquet(path)  # empty, cut off, not Parquet: named with the fix
    try:
        table = pq.read_table(path)
    except Exception as err:  # a damaged row group behind a readable footer
        raise datafiles.unreadable([path], err) from err
    if "content" not in table.column_names:
        raise InputError(f"{path} has no 'content' column (columns: {', '.join(table.column_names)})")
    return table.column("content").to_pylist()


def _requested_forms(records: list[dict[str, Any]], form: str | None) -> list[str | None]:
    if form is not None:
        return [form] * len(records)
    requested = [record.get("form") or None for record in records]
    for number, want in enumerate(requested, 1):
        if want is not None and want not in poetry.FORMS:
            raise InputError(f"poem {number}: unknown form {want!r}; choose one of {', '.join(poetry.FORMS)}")
    return requested


def _stopped_at_eos(records: list[dict[str, Any]]) -> list[bool] | None:
    flagged = sum("stopped_at_eos" in record for record in records)
    if flagged == 0:
        return None
    if flagged != len(records):
        raise InputError(
            f"{flagged} of {len(records)} poems have 'stopped_at_eos'; give it for every poem or for none"
        )
    return [bool(record["stopped_at_eos"]) for record in records]


def score_file(path: Path, form: str | None = None, reference: Path | None = None) -> dict[str, Any]:
    """The metrics of the poems in `path`, with a copy check against `reference` if given."""
    records = read_records(path)
    if not records:
        raise InputError(f"no poems in {path}")
    index = CopyIndex(read_poems(reference)) if reference else None
    return poetry.score_poems(
        [record["content"] for record in records],
        _requested_forms(records, form),
        stopped_at_eos=_stopped_at_eos(records),
        reference=index,
        critic_weights=dataclasses.asdict(CriticConfig()),  # the defaults: poetry_sft/config/schema.py
        titles=[record.get("title") for record in records],
        rhyme_groups=_rhyme_groups(records),
    )


def _rhyme_groups(records: list[dict[str, Any]]) -> list[str | None]:
    """The group each record's rhyme-aware prompt asked for (generate writes it), checked."""
    groups = [record.get("rhyme_group") or None for record in records]
    for number, group in enumerate(groups, 1):
        if group is not None:
            try:
                groups[number - 1] = find_level_group(group)
            except ValueError as err:
                raise InputError(f"poem {number}: rhyme_group {err}") from None
    return groups


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poetry-sft score", description="Score a file of poems and print the metrics as JSON."
    )
    parser.add_argument(
        "poems", type=Path, help=".jsonl with a 'content' field, or .txt separated by blank lines"
    )
    parser.add_argument("--form", choices=poetry.FORMS, help="the form every poem was asked for")
    parser.add_argument(
        "--reference", type=Path, help="training poems (.parquet, .jsonl or .txt) for copy rates"
    )
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scores = score_file(args.poems, args.form, args.reference)
    rounded = {key: round(value, 4) if isinstance(value, float) else value for key, value in scores.items()}
    print(json.dumps(rounded, ensure_ascii=False, indent=2))
    return 0
