"""The run directory: what a run writes, how a finished one is recognised, and how it is read back.

<run_dir>/
  config.yaml      the resolved RunConfig (what `load_run_config` reads)
  model/           adapter (LoRA/QLoRA: adapter_model.safetensors + adapter_config.json) or full model,
                   plus the tokenizer
  checkpoints/     Trainer checkpoints while training
  data_report.json rows in, dropped by reason, rows out, token length percentiles
  metrics.json     written last: its presence marks a finished run
  .hydra/          Hydra's composed config and overrides
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from poetry_sft.config import RunConfig, validate
from poetry_sft.errors import RunDirError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
DATA_REPORT_FILE = "data_report.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"


def is_finished(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file()


def ensure_fresh(run_dir: Path) -> None:
    """Refuse a directory whose finished run or checkpoints would be overwritten."""
    if is_finished(run_dir):
        raise RunDirError(
            f"{run_dir} already holds a finished run ({METRICS_FILE} exists); it is never overwritten.\n"
            f"  Fix: choose a new directory, run_dir=runs/<new-name>, or move {run_dir} away yourself."
        )
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise RunDirError(
            f"{run_dir} holds checkpoints of an unfinished run; training here would overwrite them.\n"
            "  Fix: choose a new directory, run_dir=runs/<new-name>."
        )


def save_run_config(cfg: RunConfig, run_dir: Path) -> None:
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
