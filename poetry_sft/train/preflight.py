"""Checks of a validated config against what is installed and against the model's architecture.

`checks.validate` knows only the config; these need transformers, the model's config.json or the file
system, and would otherwise fail late: TRL/transformers/peft reject an unknown scheduler, a reporting
integration that is not installed, target modules that match nothing or FlashAttention without its
package only after the data is prepared and the weights loaded. No weights load here: target modules are
matched on a meta-device model built from the config alone.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from poetry_sft.config.schema import RunConfig
from poetry_sft.errors import ConfigError

log = logging.getLogger(__name__)

# transformers' attention implementations; "kernels-community/..." Hub kernels and "paged|..." pass through.
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
_DATA_SUFFIXES = {".parquet", ".jsonl", ".json", ".csv", ".txt", ".arrow"}


def check_preflight(cfg: RunConfig) -> None:
    """Raise ConfigError naming every problem found (and its fix) before anything loads."""
    if problems := preflight_problems(cfg):
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def preflight_problems(cfg: RunConfig) -> list[str]:
    problems = [*_path_problems(cfg), *_scheduler_problems(cfg), *_report_to_problems(cfg)]
    problems += _attention_problems(cfg)
    if cfg.trainer:  # the pass-through's keys, against TRL's SFTConfig (imports trl)
        from poetry_sft.train.sft import trainer_problems

        problems += trainer_problems(cfg)
    if cfg.method.uses_adapter and not problems:  # builds a meta model: only for an otherwise sound config
        problems += target_module_problems(cfg)
    return problems


def _looks_local(path: str) -> bool:
    """A file path rather than a Hub id (owner/name)."""
    p = Path(path).expanduser()
    return p.is_absolute() or path.startswith((".", "~")) or p.suffix in _DATA_SUFFIXES or path.count("/") > 1


def _path_problems(cfg: RunConfig) -> list[str]:
    problems = []
    data = cfg.data.path
    if data != "sample" and _looks_local(data) and not Path(data).expanduser().exists():
        problems.append(
            f"data.path={data} does not exist (relative paths start from {Path.cwd()}). Fix: point at your "
            "poems, data.path=path/to/poems.jsonl (or .parquet/.csv, with title and content columns), or use "
            "the shipped sample: data=sample"
        )
    model = cfg.model.name_or_path
    local = Path(model).expanduser()
    if cfg.model.random_init is None and _looks_local(model) and not local.is_dir():
        problems.append(
            f"model.name_or_path={model} is not a directory. Fix: name a folder with config.json and the "
            "weights (huggingface-cli download Qwen/Qwen3-0.6B --local-dir ./qwen3-0.6b), or a Hub id"
        )
    elif cfg.model.random_init is None and local.is_dir() and not (local / "config.json").is_file():
        from poetry_sft.model.loading import local_model_dir_problem

        problems.append("model.name_or_path: " + local_model_dir_problem(local).replace("\n  Fix:", " Fix:"))
    return problems


# transformers.trainer_utils imports peft and bitsandbytes (10 s on a busy CPU), so the names every config
# here uses are taken as known without it; anything else is checked against transformers' own list.
_COMMON_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


def _scheduler_problems(cfg: RunConfig) -> list[str]:
    if cfg.train.lr_scheduler_type in _COMMON_SCHEDULERS:
        return []
    from transformers.trainer_utils import SchedulerType

    known = [s.value for s in SchedulerType]
    if cfg.train.lr_scheduler_type in known:
        return []
    return [
        f"train.lr_scheduler_type={cfg.train.lr_scheduler_type!r} is not a transformers scheduler. Fix: "
        f"choose one of {', '.join(known)}" + _close(cfg.train.lr_scheduler_type, known)
    ]


def _report_to_problems(cfg: RunConfig) -> list[str]:
    name = cfg.train.report_to
    if name in ("none", "all"):  # before the import below (as slow as the scheduler's)
        return []
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    if name not in INTEGRATION_TO_CALLBACK:
        known = ["none", "all", *INTEGRATION_TO_CALLBACK]
        return [
            f"train.report_to={name!r} is not a transformers integration. Fix: choose one of "
            f"{', '.join(known)}" + _close(name, known)
        ]
    if name not in get_available_reporting_integrations():
        package = {"comet_ml": "comet-ml", "azure_ml": "azureml-core"}.get(name, name)
        return [
            f"train.report_to={name} needs the {name} package, which is not installed. Fix: "
            f"pip install {package}, or train.report_to=none (the losses are in the run's log_history.json)"
        ]
    return []


def _attention_problems(cfg: RunConfig) -> list[str]:
    attn = cfg.model.attn_implementation
    if "/" in attn or attn.startswith("paged"):
        return []
    if attn not in ATTENTION:
        return [
            f"model.attn_implementation={attn!r} is not one of {', '.join(ATTENTION)}. Fix: "
            "model.attn_implementation=sdpa (PyTorch's, works everywhere)" + _close(attn, list(ATTENTION))
        ]
    package = _FLASH_PACKAGES.get(attn)
    if package is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return [
            f"model.attn_implementation={attn} runs only on an NVIDIA GPU, and this torch sees none. Fix: "
            "model.attn_implementation=sdpa (packing and padding-free batches work with it too)"
        ]
    if importlib.util.find_spec(package) is None:
        return [
            f"model.attn_implementation={attn} needs the {package} package, which is not installed. Fix: "
            "model.attn_implementation=sdpa, or pip install flash-attn --no-build-isolation (Linux, CUDA)"
        ]
    return []


def target_module_problems(cfg: RunConfig) -> list[str]:
    """`method.target_modules` names that match no module of the model, as peft matches them (a module
    whose name is the target or ends in `.target`). peft refuses only when none matches; a typo among
    several would silently leave that projection untrained."""
    targets = list(cfg.method.target_modules)
    if targets == ["all-linear"]:
        return []
    names = _module_names(cfg)
    if names is None:
        return []  # the model's config is not on this machine: loading the model will say so
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not unmatched:
        return []
    leaves = sorted({n.rsplit(".", 1)[-1] for n, kind in names.items() if kind in ("Linear", "Embedding")})
    return [
        f"method.target_modules: {', '.join(unmatched)} match no module of {cfg.model.name}. Fix: choose "
        f"from {', '.join(leaves)}, e.g. method.target_modules=[q_proj,v_proj], or [all-linear]"
        + _close(unmatched[0], leaves)
    ]


def _module_names(cfg: RunConfig) -> dict[str, str] | None:
    """{module name: class name} of the model, built on the meta device (no memory, no weights)."""
    config = _model_config(cfg)
    if config is None:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def _model_config(cfg: RunConfig) -> Any:
    spec = cfg.model.random_init
    if spec is not None:
        from poetry_sft.model.random_init import qwen3_config, vocab_size

        return qwen3_config(spec, vocab_size(spec))
    from transformers import AutoConfig

    try:  # a local directory, or the Hub cache: never the network
        return AutoConfig.from_pretrained(
            cfg.model.name_or_path, revision=cfg.model.revision, local_files_only=True
        )
    except (OSError, ValueError) as err:
        log.debug("target modules not checked: no config for %s (%s)", cfg.model.name_or_path, err)
        return None


def _close(value: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(value, options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
