"""Stages after SFT: where a rejection-sampling or GRPO run starts, what it asks its model for, which stage
trains.

A stage run starts from a finished run (`init_run=runs/<run>`) and ends as a run directory like any other
(config, model/, metrics, eval report before vs after, model card), so generate, the studio, merge and
export work on it unchanged. It takes from its init run:

* the model: a full run's saved weights become the base (`model.name_or_path=<init_run>/model`) with a new
  LoRA adapter by default (`method=lora`); a LoRA/QLoRA run's adapter trains on (same base, same method);
* the prompts (`data.*`): the same template, rhyme hints and data set, so it asks its model exactly what
  the model learned to answer; the titles of the init run's training poems are what it asks for.

`resolve_init_run` checks and applies that before anything loads (the train command's preflight).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

from poetry_sft.config.checks import validate
from poetry_sft.config.schema import RunConfig, Stage
from poetry_sft.errors import ConfigError
from poetry_sft.run import artifacts

log = logging.getLogger(__name__)


def resolve_init_run(cfg: RunConfig) -> RunConfig:
    """The run config a stage trains with: its model and prompts from `init_run` (see the module
    docstring). An init_run that is not a finished run is refused, naming the fix. SFT runs pass through."""
    if cfg.stage.name is Stage.sft or not cfg.init_run:
        return cfg
    init_dir = Path(cfg.init_run).expanduser().resolve()
    given = f"init_run={cfg.init_run}"
    fix = "Fix: init_run=<a run that finished training>, e.g. the demo's (poetry-sft train recipe=demo)"
    if not init_dir.is_dir():
        raise ConfigError(f"{given}: no such directory.\n  {fix}")
    if not (init_dir / artifacts.CONFIG_FILE).is_file():
        raise ConfigError(f"{given} is not a poetry_sft run (no {artifacts.CONFIG_FILE}).\n  {fix}")
    if not artifacts.is_finished(init_dir) or not (init_dir / artifacts.MODEL_DIR).is_dir():
        raise ConfigError(
            f"{given} has not finished training (no {artifacts.METRICS_FILE} or {artifacts.MODEL_DIR}/): a "
            f"stage needs its trained model.\n  Fix: finish it first (the same train command with "
            f"run_dir={cfg.init_run} resumes it), or choose a finished run"
        )
    init = artifacts.load_run_config(init_dir)
    resolved = dataclasses.replace(cfg, init_run=str(init_dir), data=init.data)
    if (init_dir / artifacts.MODEL_DIR / "adapter_config.json").is_file():
        # The init run's adapter trains on, on the base it was trained on.
        resolved = dataclasses.replace(resolved, model=init.model, method=init.method)
    else:
        weights = str(init_dir / artifacts.MODEL_DIR)
        model = dataclasses.replace(init.model, name_or_path=weights, random_init=None, revision=None)
        resolved = dataclasses.replace(resolved, model=model)
    return validate(resolved)


def stage_subjects(rows: list[dict[str, str]], count: int, seed: int) -> list[str]:
    """`count` distinct subjects (titles) of the training poems, drawn with `seed`."""
    subjects = sorted({row["subject"] for row in rows if row["subject"]})
    if not subjects:
        raise ConfigError("the init run's training poems have no titles (subjects) to ask its model for")
    return random.Random(seed).sample(subjects, min(count, len(subjects)))
