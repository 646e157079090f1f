"""Poems in, training examples out: loading, cleaning, selection, chat prompts, tokenisation, split.

One pass, cached as a whole (keyed by the source, the data config, the tokenizer and max_length):

  load (Hub id or local files, column mapping)  -> clean (drop and count bad rows, normalise lines)
  -> select (dynasty/author/form)  -> deduplicate  -> shuffle (data.split_seed)  -> max_samples
  -> prompt + tokenise (chat template, thinking off)  -> drop poems longer than max_length tokens
  -> split (eval first, train the rest)  -> report (rows dropped by reason, token length percentiles)

The examples are TRL's pre-tokenised prompt-completion form: `input_ids` and `labels` (-100 on the
prompt), so SFTTrainer trains on the poem and its end-of-turn token only. `make_formatting_func`
gives the same example in TRL's conversational prompt-completion format; tests check that TRL's own
tokenisation of that example yields our labels. We tokenise ourselves because TRL renders the chat
template twice and tokenises twice per example, one example at a time: minutes on the 321k-poem
corpus. Here each poem's rendered chat is one string for the Rust tokenizer (all cores), and the
columns are built whole in numpy/Arrow, never row by row. `python -m bench.bench_data --trl` times
both on the 321k-poem corpus in one run (2 cores, another job running): ours 51.7 s, TRL's
`_prepare_dataset` of the same prompt-completion chats 303.4 s (~24 s for ours on an idle machine).

Why our own cache (a key over pipeline version, source fingerprint, data settings, tokenizer and
max_length) and not `datasets`' map cache: that cache keys each `.map` call, but tokenising here is
one numpy/Arrow pass, not a map, and a whole-result key lets a re-run skip loading and cleaning too:
the cached re-run takes 0.37 s in the same benchmark. Disk-full while caching only warns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poetry_sft.atomic import staged_directory
from poetry_sft.config.schema import DataConfig, PromptStyle
from poetry_sft.data.datafiles import check_data_file, unreadable
from poetry_sft.data.prompts import (
    CHAT_TEMPLATE_KWARGS,
    chat_prompt,
    control_token_pattern,
    keywords_text,
    make_formatting_func,
    poem_keywords,
    prompt_fields,
    prompt_subject,
    prompt_template,
    rhyme_hint_count,
    user_and_completion,
)
from poetry_sft.errors import ConfigError, DataFileError, PoetrySFTError, ResourceNotFoundError, is_disk_full
from poetry_sft.paths import IMAGERY_WORDS, SAMPLE_POEMS, cache_dir
from poetry_sft.poetry import HAN_CLASS, corpus_form, split_first_line
from poetry_sft.poetry.rhyme_hint import RHYME_CHARS_TABLE

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_PIPELINE_VERSION = "4"  # bump when the output of prepare_poems changes for the same inputs
TRAIN_ROWS_FILE = "train_rows.json"  # in a cache entry: PreparedData.train_rows
# datasets builder for each local file type
# poems tokenised per call: bounds the tokenizer's per-token bookkeeping (offsets, token strings)
_ENCODE_CHUNK = 20_000
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
# data.keywords_column while loaded: a str or list column (datasets may type it JSON); cleaning writes
# the text that prompts use into "keywords".
_GIVEN_KEYWORDS = "given_keywords"

# ---------------------------------------------------------------------------------------------
# Loading


def _source_files(cfg: DataConfig) -> list[Path] | None:
    """The local files behind data.path, or None for a Hub id. ConfigError for unusable paths."""
    path = SAMPLE_POEMS if cfg.path == "sample" else Path(cfg.path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _BUILDERS)
        if not files or len({_BUILDERS[p.suffix] for p in files}) > 1:
            raise ConfigError(
                f"data.path={cfg.path} must hold files of one type ({', '.join(_BUILDERS)}); found "
                f"{[p.name for p in files] or 'none'}.\n  Fix: point data.path at one poem file, or at a "
                "folder of poem files of one type"
            )
        return files
    if path.is_file():
        if path.suffix not in _BUILDERS:
            raise ConfigError(
                f"data.path={cfg.path}: unsupported file type; use one of {', '.join(_BUILDERS)}"
            )
        return [path]
    if path.suffix in _BUILDERS:
        raise ConfigError(f"data.path={cfg.path}: no such file (looked in {path.resolve().parent})")
    return None


def _load_raw(cfg: DataConfig, files: list[Path] | None) -> Dataset:
    from datasets import load_dataset

    if files is not None:
        for path in files:  # an empty, non-UTF-8, cut-off or malformed file: named, with the fix
            check_data_file(path)
        try:
            return load_dataset(_BUILDERS[files[0].suffix], data_files=[str(p) for p in files], split="train")
        except Exception as err:  # what the checks cannot see (mixed column types, a damaged row group)
            raise unreadable(files, err) from err
    try:
        return load_dataset(cfg.path, split=cfg.split)
    except Exception as err:  # the Hub raises a dozen types for "not reachable" / "no such data set"
        raise ResourceNotFoundError(
            f"could not load the data set '{cfg.path}' (split '{cfg.split}'): {str(err).splitlines()[0]}\n"
            "  It is neither a local file/directory nor reachable on the Hugging Face Hub (offline? typo?).\n"
            "  Fix: point at a local copy, data.path=path/to/poems.parquet (or .jsonl/.csv, with title and "
            "content columns), or use the shipped sample: data=sample"
        ) from err


def _column_map(cfg: DataConfig) -> dict[str, str]:
    """source column -> our column"""
    columns = {cfg.title_column: "title", cfg.content_column: "content"}
    for ours in ("author", "dynasty"):
        if (source := getattr(cfg, f"{ours}_column")) is not None:
            columns[source] = ours
    if cfg.keywords_column is not None:  # cleaning turns it into "keywords" (text, or picked from the poem)
        columns[cfg.keywords_column] = _GIVEN_KEYWORDS
    return columns


def _select_columns(dataset: Dataset, cfg: DataConfig) -> Dataset:
    """title/content, plus author/dynasty where mapped and present; missing ones fail only when used."""
    columns = _column_map(cfg)
    used = prompt_fields(prompt_template(cfg)) | {"title", "content"}
    used |= {key for key, chosen in (("author", cfg.authors), ("dynasty", cfg.dynasties)) if chosen}
    used |= {_GIVEN_KEYWORDS} if "keywords" in used else set()
    missing = [src for src, ours in columns.items() if ours in used and src not in dataset.column_names]
    if missing:
        fixes = " ".join(f"data.{columns[c]}_column=<name>" for c in missing)
        raise ConfigError(
            f"data set '{cfg.path}' has no column {', '.join(map(repr, missing))}; it has "
            f"{dataset.column_names}. Fix: map the columns, e.g. {fixes}"
        )
    columns = {src: ours for src, ours in columns.items() if src in dataset.column_names}
    for src, ours in columns.items():
        if ours in ("title", "content", "author", "dynasty"):
            _refuse_non_text_column(dataset, cfg, src)
    return dataset.select_columns(list(columns)).rename_columns(
        {src: ours for src, ours in columns.items() if src != ours}
    )


def _refuse_non_text_column(dataset: Dataset, cfg: DataConfig, column: str) -> None:
    """A column of lists (a poem's lines) or numbers: every row would be dropped as not_text."""
    feature = dataset.features[column]
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string", "null"):
        return
    is_list = dtype is None or dtype == "list"
    kind = "lists (each poem's lines as a list?)" if is_list else f"{dtype} values"
    fix = (
        f"join each row's lines into one string with newlines, e.g. jq -c '.{column} |= join(\"\\n\")' "
        f"in.jsonl > out.jsonl, or in Python row['{column}'] = '\\n'.join(row['{column}'])"
        if is_list
        else "map the text column instead (data.title_column / data.content_column), or store them as text"
    )
    raise DataFileError(
        f"data set '{cfg.path}': its column {column!r} holds {kind}, not one text per poem, so every row "
        f"would be dropped.\n  Fix: {fix}"
    )


# ---------------------------------------------------------------------------------------------
# Cleaning: every row gets a reason ("" = keep); the report counts them

_HAN_CHAR = re.compile(f"[{HAN_CLASS}]")
# Placeholders for lost characters (□), the replacement character of broken decoding, private-use
# code points (old corpora's stand-ins for rare characters): the text at that spot is unknown.
_PLACEHOLDER = re.compile("[□■\ufffd\ue000-\uf8ff]")
# Letters that are neither Chinese nor punctuation/space: mojibake (é¹), Latin text, digits.
_FOREIGN = re.compile(
    rf"[^{HAN_CLASS}\s\u2000-\u206f\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
    r"!-/:-@\[-`{-~·]"
)

DROP_REASONS = (
    "not_text",  # content missing or not a string
    "empty",  # nothing but whitespace
    "placeholder",  # □ / � / private-use characters: lost text
    "special_token",  # the text of a tokenizer control token (<|im_end|>, <think>...) in a poem or title
    "garbled",  # too few Chinese characters: mojibake or not Chinese
    "too_short",  # fewer than data.min_chars Chinese characters
    "too_long_chars",  # more than data.max_chars
    "no_title",  # the prompt needs a title and there is none, or only punctuation (likewise no_author, ...)
    "no_author",
    "no_dynasty",
    "no_keywords",  # prompt_style=keywords: no data.keywords_column value and no imagery word in the poem
    "one_line",  # prompt_style=first_line needs a second line to continue
    "not_selected",  # outside data.dynasties / data.authors / data.forms
    "duplicate",  # the same poem text again (the first copy stays)
    "too_long_tokens",  # prompt + poem longer than hardware.max_length tokens
)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _has_words(text: str) -> bool:
    """A title (author, dynasty) that says something: not empty, not only punctuation (，。 ……)."""
    return any(char.isalnum() for char in text)


def _normalise(content: str) -> str:
    if not ("\r" in content or " \n" in content or "\n " in content or "\n\n" in content) and (
        content == content.strip()
    ):
        return content  # the common case, without splitting
    lines = (line.strip() for line in content.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def _clean_batch(batch: dict[str, list], settings: dict[str, Any]) -> dict[str, list]:
    reasons, contents, forms, keywords = [], [], [], []
    special = settings["special_tokens"]
    given_keywords = [keywords_text(v) for v in batch.get(_GIVEN_KEYWORDS, [])] or None
    extra: dict[str, list[str]] = {
        key: [_text(v) for v in batch[key]] for key in ("title", "author", "dynasty") if key in batch
    }
    for i, raw in enumerate(batch["content"]):
        content = _normalise(raw) if isinstance(raw, str) else ""
        form = keyword = ""
        if not isinstance(raw, str):
            reason = "not_text"
        elif not content:
            reason = "empty"
        elif _PLACEHOLDER.search(content):
            reason = "placeholder"
        elif special and (
            special.search(content) or any(special.search(column[i]) for column in extra.values())
        ):
            reason = "special_token"  # would be read as the control token itself: a poem ending mid-way
        else:
            han = len(_HAN_CHAR.findall(content))
            foreign = len(_FOREIGN.findall(content))
            if han == 0 or han < settings["min_chinese_fraction"] * (han + foreign):
                reason = "garbled"
            elif han < settings["min_chars"]:
                reason = "too_short"
            elif settings["max_chars"] is not None and han > settings["max_chars"]:
                reason = "too_long_chars"
            else:
                reason = next((f"no_{k}" for k in settings["needed"] if not _has_words(extra[k][i])), "")
                if not reason and settings["one_line_ok"] is False and split_first_line(content) is None:
                    reason = "one_line"
                if not reason and settings["max_keywords"]:
                    keyword = (given_keywords and given_keywords[i]) or poem_keywords(
                        content, settings["max_keywords"]
                    )
                    reason = "" if keyword else "no_keywords"
                if not reason and settings["need_form"]:
                    form = corpus_form(content)
                if not reason and settings["selection"]:
                    values: dict[str, str] = {"form": form, **{key: col[i] for key, col in extra.items()}}
                    if any(values[key] not in chosen for key, chosen in settings["selection"].items()):
                        reason = "not_selected"
        reasons.append(reason)
        contents.append(content)
        forms.append(form)
        keywords.append(keyword)
    columns: dict[str, list] = {**extra, "content": contents, "form": forms, "reason": reasons}
    return {**columns, "keywords": keywords} if settings["max_keywords"] else columns


# ---------------------------------------------------------------------------------------------
# Prompt + tokenise


def _chat_skeleton(tokenizer: PreTrainedTokenizerBase, system_prompt: str) -> tuple[str, str]:
    """(text before, text after) the user message in the rendered prompt: rendering the template once,
    not once per poem (~140 us each on 321k poems). Verified against full renders in _verify."""
    marker = "\u2060POETRY_SFT_USER\u2060"
    rendered = chat_prompt(tokenizer, system_prompt, marker)
    if rendered.count(marker) != 1:
        raise PoetrySFTError(
            f"the chat template of '{tokenizer.name_or_path}' does not render the user text once"
        )
    head, tail = rendered.split(marker)
    return head, tail


def _examples(
    table: pa.Table, template: str, style: PromptStyle, hint_count: int = 0
) -> tuple[list[str], list[str]]:
    """(user message, completion) per row."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    names = list(columns)
    pairs = [
        user_and_completion(template, style, dict(zip(names, values, strict=True)), hint_count=hint_count)
        for values in zip(*columns.values(), strict=True)
    ]
    return [user for user, _ in pairs], [completion for _, completion in pairs]


def _encode_examples(
    tokenizer: PreTrainedTokenizerBase, head: str, tail: str, users: list[str], completions: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat input ids, example offsets, prompt lengths) for head + user + tail + completion + eos.

    Each example is one string, tokenised once: the rendered chat itself (what TRL would tokenise),
    split into prompt and completion at the tail's first token, which must start a token (_verify and
    the check below see to it). In chunks, so the tokenizer's per-token bookkeeping stays small.
    """
    import numpy as np

    backend = getattr(tokenizer, "backend_tokenizer", None)
    eos = tokenizer.eos_token
    ids: list[np.ndarray] = []
    prompt_lengths: list[int] = []
    for first in range(0, len(users), _ENCODE_CHUNK):
        chunk = range(first, min(first + _ENCODE_CHUNK, len(users)))
        texts = [f"{head}{users[i]}{tail}{completions[i]}{eos}" for i in chunk]
        tail_at = [len(head) + len(users[i]) for i in chunk]  # character where the tail starts
        if backend is not None:  # the Rust tokenizer itself, on all cores, without Python-side extras
            encodings = backend.encode_batch(texts, add_special_tokens=False)
            ids.extend(np.asarray(e.ids, dtype=np.int32) for e in encodings)
            prompt_lengths.extend(e.char_to_token(at) for e, at in zip(encodings, tail_at, strict=True))
        else:  # a slow (Python) tokenizer
            for text, at in zip(texts, tail_at, strict=True):
                ids.append(np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32))
                prompt_lengths.append(len(tokenizer(text[:at], add_special_tokens=False)["input_ids"]))
    lengths = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tail_ids = np.asarray(tokenizer(tail, add_special_tokens=False)["input_ids"], dtype=np.int32)
    prompt = np.asarray([-1 if n is None else n for n in prompt_lengths], dtype=np.int64) + len(tail_ids)
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    # Every example: the tail's tokens end the prompt, eos ends the poem. Anything else means the tail
    # did not start a token: the split would cut a token in two.
    inside = (prompt > len(tail_ids)) & (prompt < lengths)
    where = offsets[:-1, None] + prompt[:, None] - len(tail_ids) + np.arange(len(tail_ids))
    tails_ok = (flat[np.where(inside[:, None], where, 0)] == tail_ids).all(axis=1) & inside
    ends_ok = flat[offsets[1:] - 1] == tokenizer.eos_token_id if len(flat) else np.ones(0, dtype=bool)
    if not (tails_ok & ends_ok).all():
        bad = int(np.flatnonzero(~(tails_ok & ends_ok))[0])
        raise PoetrySFTError(
            f"the prompt of '{tokenizer.name_or_path}' cannot be split from the poem at a token boundary "
            f"for example {users[bad]!r}: the chat template's text after the user message must start with "
            "a special token (Qwen3: <|im_end|>) and the poem must end in the eos token"
        )
    return flat, offsets, prompt


def _tokenize(
    poems: pa.Table,
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str,
    template: str,
    style: PromptStyle,
    fingerprint: str,
    hint_count: int = 0,
) -> Dataset:
    """input_ids, labels (-100 on the prompt) and length per poem, built as whole Arrow columns."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    head, tail = _chat_skeleton(tokenizer, system_prompt)
    users, completions = _examples(poems, template, style, hint_count)
    flat, offsets, prompt = _encode_examples(tokenizer, head, tail, users, completions)
    # Prompt positions: +1 where an example starts, -1 where its poem starts; the running sum is 1 inside
    # prompts. One pass over the tokens instead of a position per token.
    edges = np.zeros(len(flat) + 1, dtype=np.int8)
    np.add.at(edges, offsets[:-1], 1)
    np.add.at(edges, offsets[:-1] + prompt, -1)
    labels = np.where(np.cumsum(edges[:-1], dtype=np.int8) > 0, np.int32(-100), flat)
    wide = offsets[-1] >= 2**31  # Arrow's list offsets are int32 up to 2G tokens
    list_type, list_offsets = (
        (pa.LargeListArray, pa.array(offsets)) if wide else (pa.ListArray, pa.array(offsets.astype(np.int32)))
    )
    table = pa.table(
        {
            "input_ids": list_type.from_arrays(list_offsets, pa.array(flat)),
            "labels": list_type.from_arrays(list_offsets, pa.array(labels)),
            "length": pa.array(np.diff(offsets).astype(np.int32)),
        }
    )
    digest = hashlib.sha256(f"{fingerprint}{head}{tail}{template}{style}{hint_count}".encode()).hexdigest()[
        :16
    ]
    return Dataset(table, fingerprint=digest)


def _verify(
    tokenizer: PreTrainedTokenizerBase, cfg: DataConfig, rows: list[dict[str, Any]], tokenized: Dataset
) -> None:
    """Our fast path must equal the tokenizer's own rendering of the same chat, token for token."""
    formatting_func = make_formatting_func(cfg)
    for row, example in zip(rows, tokenized, strict=False):
        chat = formatting_func(row)
        rendered = tokenizer.apply_chat_template(
            chat["prompt"] + chat["completion"], tokenize=False, **CHAT_TEMPLATE_KWARGS
        )
        expected = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        ids = example["input_ids"]
        if expected[: len(ids)] != ids or ids[-1] != tokenizer.eos_token_id:
            raise PoetrySFTError(
                f"the chat template of '{tokenizer.name_or_path}' renders poems differently from the "
                f"prompt + poem + eos that poetry_sft trains on:\n  template: {rendered!r}\n  "
                f"ours: {tokenizer.decode(ids)!r}\n  (the template's end-of-turn token must be the eos token)"
            )


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class PreparedData:
    train: Dataset  # input_ids, labels (-100 on the prompt), length
    eval: Dataset
    report: dict[str, Any] = field(default_factory=dict)
    # The training poems as text: what each one's prompt asked for ("subject": its title, or first line /
    # keywords by prompt style), its title and content. The rejection-sampling and GRPO stages prompt their
    # model with the subjects; rejection sampling can mix the poems back in.
    train_rows: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        r = self.report
        dropped = ", ".join(f"{k} {v:,}" for k, v in r["dropped"].items() if v) or "none"
        t = r["tokens"]
        return (
            f"data: {r['rows_in']:,} rows in, {r['rows_out']:,} out (dropped: {dropped}); "
            f"{r['train_rows']:,} train / {r['eval_rows']:,} eval; tokens per example p50 {t['p50']} "
            f"p90 {t['p90']} p99 {t['p99']} max {t['max']}" + (" (cached)" if r.get("cached") else "")
        )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend else json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(vocabulary.encode())
    for part in (tokenizer.chat_template or "", tokenizer.eos_token, tokenizer.pad_token or ""):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def _cache_key(cfg: DataConfig, source: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k != "name"}
    keyed = "keywords" in prompt_fields(prompt_template(cfg))  # the word list picks the keywords
    imagery = hashlib.sha256(IMAGERY_WORDS.read_bytes()).hexdigest() if keyed else ""
    if cfg.rhyme_hint:  # the rhyme table fills the hints' other characters
        imagery += hashlib.sha256(RHYME_CHARS_TABLE.read_bytes()).hexdigest()
    payload = json.dumps(
        [_PIPELINE_VERSION, source, settings, tokenizer_fingerprint(tokenizer), max_length, imagery],
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _fingerprint(dataset: Dataset, step: str, indices: list[int] | np.ndarray) -> str:
    """Stands in for datasets' own fingerprint, which pickles the whole index list (seconds at 300k rows)."""
    import numpy as np

    digest = hashlib.sha256(f"{dataset._fingerprint}:{step}".encode())
    digest.update(np.asarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def prepare_poems(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, max_length: int, use_cache: bool = True
) -> PreparedData:
    """Cleaned, prompted, tokenised (train, eval) and the data report; cached across runs."""
    files = _source_files(cfg)
    if files is not None:
        source = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
        raw = None
    else:
        raw = _load_raw(cfg, None)
        source = f"hub:{cfg.path}:{cfg.split}:{raw._fingerprint}"
    target = cache_dir() / "data" / _cache_key(cfg, source, tokenizer, max_length)
    if use_cache and (target / "report.json").is_file():
        from datasets import load_from_disk

        report = json.loads((target / "report.json").read_text(encoding="utf-8"))
        report["cached"] = True
        rows = json.loads((target / TRAIN_ROWS_FILE).read_text(encoding="utf-8"))
        return PreparedData(load_from_disk(target / "train"), load_from_disk(target / "eval"), report, rows)
    started = time.perf_counter()
    raw = raw if raw is not None else _load_raw(cfg, files)
    load_seconds = time.perf_counter() - started
    prepared = _prepare(cfg, tokenizer, max_length, raw)
    prepared.report["seconds"] = {"load": round(load_seconds, 2), **prepared.report["seconds"]}
    if use_cache:
        try:
            _save(prepared, target)
        except Exception as err:  # the cache only saves time: a full disk there need not stop the run
            if not is_disk_full(err):
                raise
            log.warning("no space left to cache the prepared data in %s: going on without the cache", target)
    return prepared


def _prepare(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, max_length: int, raw: Dataset
) -> PreparedData:
    import numpy as np

    clock = time.perf_counter()
    dataset = _select_columns(raw, cfg)
    rows_in = len(dataset)
    template = prompt_template(cfg)
    fields = prompt_fields(template)
    settings = {
        "min_chinese_fraction": cfg.min_chinese_fraction,
        "min_chars": cfg.min_chars,
        "max_chars": cfg.max_chars,
        "needed": [f for f in ("title", "author", "dynasty") if f in fields],
        "one_line_ok": cfg.prompt_style is not PromptStyle.first_line,
        "need_form": bool(cfg.forms) or "form" in fields,
        "special_tokens": control_token_pattern(tokenizer),
        "max_keywords": cfg.max_keywords if "keywords" in fields else 0,  # 0: no {keywords} in the prompt
        "selection": {
            key: set(chosen)
            for key, chosen in (("dynasty", cfg.dynasties), ("author", cfg.authors), ("form", cfg.forms))
            if chosen
        },
    }
    dataset = dataset.map(
        _clean_batch,
        batched=True,
        batch_size=5000,
        fn_kwargs={"settings": settings},
        remove_columns=[c for c in (_GIVEN_KEYWORDS,) if c in dataset.column_names],
        keep_in_memory=True,  # one process: ~10 us a row, cheaper than shipping rows to workers
        new_fingerprint=hashlib.sha256(json.dumps([raw._fingerprint, str(settings)]).encode()).hexdigest()[
            :16
        ],
        desc="Cleaning poems",
    )
    dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
    # Whole Arrow columns: iterating a datasets Column goes row by row (~100 us a row).
    reasons = dataset.data.column("reason").to_pylist()
    dropped.update(r for r in reasons if r)
    keep = [i for i, r in enumerate(reasons) if not r]
    # Exact duplicates: the same normalised text is one poem, whatever its title; the first copy stays,
    # so no poem lands in both train and eval.
    contents = dataset.data.column("content").to_pylist()
    seen: set[str] = set()
    unique = []
    for i in keep:
        content = contents[i]
        if content in seen and cfg.deduplicate:
            dropped["duplicate"] += 1
        else:
            seen.add(content)
            unique.append(i)
    if not unique:
        raise PoetrySFTError(
            f"no poems left in '{cfg.path}' after cleaning and selection (dropped: "
            f"{ {k: v for k, v in dropped.items() if v} }).\n  Fix: check the column mapping "
            "(data.content_column, data.title_column) and data.dynasties/authors/forms/min_chars"
        )
    # Shuffle (as datasets' own shuffle would: PCG64 seeded with data.split_seed), then one Arrow take.
    order = np.asarray(unique)[np.random.default_rng(cfg.split_seed).permutation(len(unique))]
    order = order[: cfg.max_samples]
    poems = dataset.data.table.take(order).drop_columns(["reason"])
    clean_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    tokenized = _tokenize(
        poems,
        tokenizer,
        cfg.system_prompt,
        template,
        cfg.prompt_style,
        _fingerprint(dataset, "order", order),
        rhyme_hint_count(cfg),
    )
    _verify(tokenizer, cfg, poems.slice(0, 8).to_pylist(), tokenized)
    tokenize_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    lengths = tokenized.data.column("length").to_pylist()
    fits = [i for i, n in enumerate(lengths) if n <= max_length]
    dropped["too_long_tokens"] = len(lengths) - len(fits)
    n_eval = int(cfg.eval_size) if cfg.eval_size >= 1 else max(1, round(cfg.eval_size * len(fits)))
    if n_eval >= len(fits):
        raise ConfigError(
            f"data.eval_size={cfg.eval_size} leaves no training poems out of {len(fits)} "
            f"(dropped: { {k: v for k, v in dropped.items() if v} }).\n  Fix: lower data.eval_size, raise "
            "data.max_samples, or raise hardware.max_length if too_long_tokens dropped them"
        )
    # Rows are already shuffled: the first n_eval are the eval set, the rest train.
    eval_rows, train_rows = fits[:n_eval], fits[n_eval:]
    eval_set = tokenized.select(eval_rows, new_fingerprint=_fingerprint(tokenized, "eval", eval_rows))
    train_set = tokenized.select(train_rows, new_fingerprint=_fingerprint(tokenized, "train", train_rows))
    report = {
        "source": cfg.path,
        "rows_in": rows_in,
        "dropped": dict(dropped),
        "rows_out": len(fits),
        "train_rows": len(train_set),
        "eval_rows": len(eval_set),
        "max_length": max_length,
        "prompt_style": str(cfg.prompt_style),
        "tokens": _length_stats([lengths[i] for i in fits]),
        "seconds": {  # this machine, this run: what preparation cost before it was cached
            "clean": round(clean_seconds, 2),
            "prompt_and_tokenize": round(tokenize_seconds, 2),
            "split": round(time.perf_counter() - clock, 2),
        },
    }
    rows = poems.select([c for c in ("title", "content", "keywords") if c in poems.column_names]).to_pylist()
    texts = [
        {
            "subject": prompt_subject(cfg.prompt_style, rows[i], cfg.max_keywords),
            "title": rows[i].get("title") or "",
            "content": rows[i]["content"],
        }
        for i in train_rows
    ]
    return PreparedData(train_set, eval_set, report, texts)


def _length_stats(lengths: list[int]) -> dict[str, float]:
    import numpy as np

    values = np.asarray(lengths)
    p50, p90, p99 = (int(np.percentile(values, q)) for q in (50, 90, 99))
    return {
        "total": int(values.sum()),
        "mean": round(float(values.mean()), 1),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": int(values.max()),
    }


def _save(prepared: PreparedData, target: Path) -> None:
    """Atomically: a concurrent run never reads half a cache entry."""
    with staged_directory(target, complete_marker="report.json") as staging:
        prepared.train.save_to_disk(str(staging / "train"))
        prepared.eval.save_to_disk(str(staging / "eval"))
        (staging / TRAIN_ROWS_FILE).write_text(json.dumps(prepared.train_rows, ensure_ascii=False))
        (staging / "report.json").write_text(json.dumps(prepared.report, ensure_ascii=False, indent=2))
