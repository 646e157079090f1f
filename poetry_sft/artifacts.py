"""The run directory: what a run writes, how a finished one is recognised, and how it is read back.

<run_dir>/
  config.yaml      the resolved RunConfig (what `load_run_config` reads)
  model/           adapter (LoRA/QLoRA: adapter_model.safetensors + adapter_config.json) or full model,
                   plus the tokenizer
  checkpoints/     Trainer checkpoints while training; an interrupted run resumes from the newest complete one
  data_report.json rows in, dropped by reason, rows out, token length percentiles
  log_history.json the Trainer's logs by step (loss, eval_loss, eval_poetry/*, learning rate)
  metrics.json     written last: its presence marks a finished run
  error.json       a sweep job that failed: the error and the tail of its log (removed when it is retried)
  .hydra/          Hydra's composed config and overrides
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from poetry_sft.config import RunConfig, validate
from poetry_sft.errors import RunDirError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
DATA_REPORT_FILE = "data_report.json"
LOG_HISTORY_FILE = "log_history.json"  # Trainer's log history: losses, eval scores and rates by step
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
ERROR_FILE = "error.json"
# What Trainer writes into checkpoint-N; trainer_state.json comes last (Trainer._save_checkpoint).
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch`/torchrun (they set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def is_finished(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file()


def ensure_fresh(run_dir: Path) -> None:
    """Refuse a directory that holds a finished run: it is never retrained or overwritten."""
    if is_finished(run_dir):
        raise RunDirError(
            f"{run_dir} already holds a finished run ({METRICS_FILE} exists); it is never overwritten.\n"
            f"  Fix: choose a new directory, run_dir=runs/<new-name>, or move {run_dir} away yourself."
        )


def is_complete_checkpoint(checkpoint: Path) -> bool:
    """Trainer writes weights, optimizer, scheduler and RNG first and trainer_state.json last, straight into
    checkpoint-N (not atomically): a checkpoint is whole only if that last file parses and names step N."""
    match = _CHECKPOINT_NAME.match(checkpoint.name)
    if not match or not (
        any((checkpoint / name).is_file() for name in WEIGHT_FILES)
        or any(checkpoint.glob("pytorch_model_fsdp_*"))  # FSDP's SHARDED_STATE_DICT
    ):
        return False
    try:
        state = read_trainer_state(checkpoint)
    except (OSError, ValueError):  # missing, or cut off mid-write by a kill
        return False
    return isinstance(state, dict) and state.get("global_step") == int(match.group(1))


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))


def find_resume_checkpoint(run_dir: Path, cfg: RunConfig) -> Path | None:
    """The newest complete checkpoint of an interrupted run in `run_dir`, or None for a fresh start.

    Refuses a finished run, and checkpoints of a run with a different config (resuming those would mix
    two experiments under one name). Half-written checkpoints are never picked.
    """
    ensure_fresh(run_dir)
    checkpoints = sorted(
        (p for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*") if _CHECKPOINT_NAME.match(p.name)),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not checkpoints:
        return None
    ensure_same_config(run_dir, cfg)
    complete = [p for p in checkpoints if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def discard_incomplete_checkpoints(run_dir: Path) -> None:
    """Remove checkpoints a kill cut off mid-write, so Trainer's rotation never keeps one over a whole one."""
    if not is_main_process():
        return
    for path in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*"):
        if path.is_dir() and not is_complete_checkpoint(path):
            log.warning("removing %s: written only in part when the run was interrupted", path)
            shutil.rmtree(path)


def ensure_same_config(run_dir: Path, cfg: RunConfig) -> None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} holds checkpoints but no {CONFIG_FILE}: it was not written by poetry_sft, "
            "so it is not resumed.\n  Fix: choose a new directory, run_dir=runs/<new-name>."
        )
    saved = _comparable(OmegaConf.load(path))
    current = _comparable(OmegaConf.structured(cfg))
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise RunDirError(
            f"{run_dir} holds a run made with a different config ({diff}); "
            "resuming or reusing it would mix two experiments.\n"
            "  Fix: resume with the same settings, or start anew elsewhere, run_dir=runs/<new-name>."
        )


def _comparable(cfg: Any) -> dict[str, Any]:
    """Flat {dotted.key: value}, minus where the run lives (a moved run directory is the same run)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("run_dir", None)
    walk(container, "")
    return flat


def save_run_config(cfg: RunConfig, run_dir: Path) -> None:
    if not is_main_process():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), run_dir / CONFIG_FILE)


def load_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a poetry_sft run directory: {CONFIG_FILE} is missing")
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, RunConfig)
    return validate(cfg)


def write_json(path: Path, payload: Any) -> None:
    """Atomic: a reader (or a crash) never sees half a file, so metrics.json really means finished."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def staged_directory(target: Path, complete_marker: str) -> Iterator[Path]:
    """Build a directory beside `target` and rename it into place when the block succeeds: a reader (or a
    concurrent builder) never sees half of it. Losing a race to another builder is fine: theirs is as good."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        yield staging
        os.replace(staging, target)
    except OSError:
        if not (target / complete_marker).exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
