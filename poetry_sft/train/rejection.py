"""The rejection-sampling stage: the init run's model writes poems, the prosody critic keeps the good ones,
and the model is fine-tuned on them (PoeTone: critic-selected best-of-N, then SFT on it).

    poetry-sft train recipe=demo_rs init_run=runs/<demo run>

1. For `stage.prompts` titles of the init run's training set, the init model writes `stage.samples` poems
   each (one generate() call per batch: evaluate/generate.py's best-of-N), unconstrained, with its own
   sampling settings and prompts (rhyme-aware runs are asked for a 韵部 per title). The critic's best poem
   of each title is kept if it scores at least `stage.min_score`; `stage.real_poems` of the init run's own
   training poems can be mixed in. They are written to <run>/rejection/poems.jsonl with a report; a run
   that is interrupted after this step reuses them.
2. SFT on that file, exactly as `poetry-sft train` trains on any poem file (train/sft.py): LoRA on the
   init model by default, the same prompts (a kept poem that rhymes gets the rhyme hint of its group).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poetry_sft import atomic
from poetry_sft.config.schema import DataConfig, RunConfig
from poetry_sft.data.corpus import prepare_poems
from poetry_sft.poetry import FORM_TABLE
from poetry_sft.run import artifacts
from poetry_sft.train import sft
from poetry_sft.train.stages import stage_subjects

log = logging.getLogger(__name__)

SAMPLES_DIR = "rejection"
POEMS_FILE = "poems.jsonl"
REPORT_FILE = "report.json"  # written last: the samples are complete


def train(
    cfg: RunConfig, run_dir: Path, on_training_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Sample and filter (or reuse what an interrupted run sampled), then fine-tune on the kept poems."""
    if on_training_start:  # from here on the run directory holds work worth keeping: the samples
        on_training_start()
    report = sample(cfg, run_dir)
    metrics = sft.train(cfg, run_dir, poems=kept_poems(cfg, run_dir))
    metrics.update({"stage": str(cfg.stage.name), "init_run": cfg.init_run, "rejection": report})
    atomic.write_json(run_dir / artifacts.METRICS_FILE, metrics)
    return metrics


def kept_poems(cfg: RunConfig, run_dir: Path) -> DataConfig:
    """The kept poems as a data source: cfg.data's prompts (template, hints) and cleaning, this file."""
    return dataclasses.replace(
        cfg.data,
        path=str(run_dir / SAMPLES_DIR / POEMS_FILE),
        split="train",
        title_column="title",
        content_column="content",
        author_column=None,
        dynasty_column=None,
        keywords_column=None,
        dynasties=[],
        authors=[],
        max_samples=None,
    )


# Constrained sampling cycles through the regulated forms of the corpus (六言 has no 平仄 rules to judge).
CONSTRAINED_FORMS = ("五言绝句", "七言绝句", "五言律诗", "七言律诗")


def _forms_for(subjects: list[str], constrain: bool) -> dict[str | None, list[str]]:
    """Titles by the form their poems are constrained to (None: unconstrained), in title order."""
    if not constrain:
        return {None: subjects}
    groups: dict[str | None, list[str]] = {}
    for index, subject in enumerate(subjects):
        groups.setdefault(CONSTRAINED_FORMS[index % len(CONSTRAINED_FORMS)], []).append(subject)
    return groups


def sample(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Write <run>/rejection/poems.jsonl and its report (or read them back from an interrupted run)."""
    out = run_dir / SAMPLES_DIR
    if (out / REPORT_FILE).is_file():
        log.info("reusing the poems sampled before: %s", out / POEMS_FILE)
        return json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    from poetry_sft.evaluate.generate import generate_poems, load_run

    assert cfg.init_run is not None
    started = time.perf_counter()
    model, tokenizer, init = load_run(Path(cfg.init_run))
    rows = prepare_poems(init.data, tokenizer, max_length=cfg.hardware.max_length).train_rows
    subjects = stage_subjects(rows, cfg.stage.prompts, cfg.train.seed)
    sampling = dataclasses.replace(init.generation, seed=cfg.train.seed, best_of=cfg.stage.samples)
    how = "under constrained decoding (form + rhyme) " if cfg.stage.constrain else ""
    log.info("sampling %d poems %sfor each of %d titles", cfg.stage.samples, how, len(subjects))
    poems = []
    for form, titles in _forms_for(subjects, cfg.stage.constrain).items():
        if form is not None:
            shape = FORM_TABLE[form]  # its characters, punctuation and line breaks, then the end token
            budget = max(sampling.max_new_tokens, shape.lines * (shape.chars_per_line + 2) + 1)
            asked = dataclasses.replace(sampling, form=form, rhyme=True, max_new_tokens=budget)
        else:
            asked = sampling
        poems += generate_poems(
            model, tokenizer, titles, init.data, asked, constrain=form is not None, critic=cfg.critic
        )
    kept = [poem for poem in poems if (poem.score or 0.0) >= cfg.stage.min_score]
    real = random.Random(cfg.train.seed).sample(rows, min(cfg.stage.real_poems, len(rows)))
    records = [{"title": p.title, "content": p.content, "score": p.score} for p in kept]
    records += [{"title": r["title"] or r["subject"], "content": r["content"], "score": None} for r in real]
    if not records:
        from poetry_sft.errors import ConfigError

        best = max((poem.score or 0.0) for poem in poems)
        raise ConfigError(
            f"no sampled poem scored stage.min_score={cfg.stage.min_score} (the best: {best:.2f}), so there "
            "is nothing to fine-tune on.\n  Fix: lower stage.min_score, raise stage.samples, or mix in real "
            "poems (stage.real_poems=200)"
        )
    random.Random(cfg.train.seed).shuffle(records)
    all_scores = [poem.score or 0.0 for poem in poems]
    report = {
        "titles": len(subjects),
        "samples_per_title": cfg.stage.samples,
        "constrained": cfg.stage.constrain,
        "min_score": cfg.stage.min_score,
        "kept": len(kept),
        "real_poems": len(real),
        "mean_best_score": round(sum(all_scores) / len(all_scores), 4),
        "mean_kept_score": round(sum(p.score or 0.0 for p in kept) / len(kept), 4) if kept else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    (out / POEMS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    atomic.write_json(out / REPORT_FILE, report)
    log.info("kept %d of %d titles' best poems (+%d real poems)", len(kept), len(subjects), len(real))
    del model
    return report
