"""The rules of a run's config that need more than the schema: the optimizers the memory plan models,
the forms of the poetry domain, the prompts a template makes.

`schema.py` is the schema and imports nothing of ours but errors; rules that need the domain live here,
above it, so every concept keeps one home. `to_run_config` is the one way from a composed DictConfig to
a validated RunConfig (the command line, `compose.run_config`, the sweep), and `validate` the one way
to check a RunConfig read back from disk.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf, open_dict

from poetry_sft.config.schema import (
    OPTIMIZERS,
    Precision,
    PromptStyle,
    RunConfig,
    SamplingConfig,
    rule_problems,
    schema_problems,
)
from poetry_sft.config.templates import PROMPT_SUBJECT, PROMPT_TEMPLATES, prompt_fields, prompt_template
from poetry_sft.errors import ConfigError
from poetry_sft.poetry import CORPUS_FORMS, FORMS, find_rhyme_group


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Hydra's DictConfig -> a validated RunConfig (interpolations resolved, hydra node dropped)."""
    if "hydra" in cfg:  # present in Hydra callbacks; the schema has no such key
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    if problems := schema_problems(cfg):
        raise ConfigError("\n".join(problems))
    run_cfg = OmegaConf.to_object(cfg)
    assert isinstance(run_cfg, RunConfig), type(run_cfg)
    return validate(run_cfg)


def validate(cfg: RunConfig) -> RunConfig:
    """Every cross-field rule. Raises one ConfigError listing each problem with its key, and the fix."""
    problems = rule_problems(cfg)
    if cfg.optimizer not in OPTIMIZERS:
        key = "method.optimizer" if cfg.method.optimizer else "hardware.optimizer"
        problems.append(f"{key}={cfg.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if unknown := [f for f in cfg.data.forms if f not in CORPUS_FORMS]:
        problems.append(f"data.forms: unknown {unknown}; choose from {', '.join(CORPUS_FORMS)}")
    problems += _prompt_problems(cfg)
    problems += sampling_problems(cfg.generation)
    if cfg.model.random_init and cfg.model.random_init.saved_precision is Precision.auto:
        problems.append(
            "model.random_init.saved_precision=auto: weights are saved in one dtype; give bf16, fp16 or fp32"
        )
    if problems:
        raise ConfigError(
            "invalid configuration:\n  - "
            + "\n  - ".join(problems)
            + "\n  Fix: give "
            + ("it" if len(problems) == 1 else "each")
            + " a value as described, key=value on the command line or in your recipe "
            "(poetry-sft train --cfg job <overrides> prints the composed config)"
        )
    return cfg


def sampling_problems(gen: SamplingConfig, key: str = "generation") -> list[str]:
    """What is wrong with sampling settings (shared by the config and the generate command's flags)."""
    problems = []
    for name in ("max_new_tokens", "batch_size", "num_eval_poems", "eval_max_new_tokens"):
        if getattr(gen, name) <= 0:
            problems.append(f"{key}.{name}={getattr(gen, name)} must be a positive integer")
    if gen.do_sample and not gen.temperature > 0:
        problems.append(f"{key}.temperature={gen.temperature} must be > 0 when sampling ({key}.do_sample)")
    if not 0 < gen.top_p <= 1:
        problems.append(f"{key}.top_p={gen.top_p} must be in (0, 1]")
    if gen.top_k < 0:
        problems.append(f"{key}.top_k={gen.top_k} must be >= 0 (0: no top-k filtering)")
    if not gen.repetition_penalty > 0:
        problems.append(f"{key}.repetition_penalty={gen.repetition_penalty} must be > 0 (1: none)")
    if gen.form is not None and gen.form not in FORMS:
        problems.append(f"{key}.form={gen.form!r} is not one of {', '.join(FORMS)} (or null: any form)")
    if gen.showcase and not gen.report:
        problems.append(f"{key}.showcase=true shows the eval report's poems: set {key}.report=true too")
    if gen.rhyme and gen.form is None:
        problems.append(f"{key}.rhyme=true needs {key}.form: rhyme is enforced within a regulated form")
    if gen.rhyme_group is not None:
        if gen.form is None:
            problems.append(f"{key}.rhyme_group needs {key}.form: rhyme is enforced within a regulated form")
        try:
            find_rhyme_group(gen.rhyme_group)
        except ValueError as err:
            problems.append(f"{key}.rhyme_group: {err}")
    return problems


def _prompt_problems(cfg: RunConfig) -> list[str]:
    """The prompt template against its style, its columns and what generation settings can give."""
    data, problems = cfg.data, []
    try:
        fields = prompt_fields(prompt_template(data))
    except ValueError as err:
        problems.append(f"data.prompt_template: {err}")
    else:
        subject = PROMPT_SUBJECT[data.prompt_style]
        if subject not in fields:  # every prompt the same text: the model learns to ignore what it is asked
            problems.append(
                f"data.prompt_style={data.prompt_style} needs {{{subject}}} in data.prompt_template="
                f"{data.prompt_template!r}: every poem would get the same prompt and the model would learn "
                f"to ignore its {subject}. Fix: put {{{subject}}} in it, e.g. "
                f"data.prompt_template='{PROMPT_TEMPLATES[data.prompt_style]}'"
            )
        problems += _generation_prompt_problems(cfg, fields)
        for column in ("author", "dynasty"):
            if column in fields and getattr(data, f"{column}_column") is None:
                problems.append(f"data.prompt_template uses {{{column}}}: set data.{column}_column")
    return problems


def _generation_prompt_problems(cfg: RunConfig, fields: set[str]) -> list[str]:
    """A run that writes poems (generation.eval_titles, sample_titles, generation.report) must be able to
    build its prompts from a title alone (plus generation.form): found before training, not after."""
    if not (cfg.generation.eval_titles or cfg.sample_titles or cfg.generation.report):
        return []
    style, given = cfg.data.prompt_style, {PROMPT_SUBJECT[cfg.data.prompt_style]}
    problems = []
    if missing := sorted(fields - given - ({"form"} if cfg.generation.form else set())):
        fix = (
            "set \"generation.form='七言绝句'\" (quoted: Hydra reads Chinese only so; or another form)"
            if missing == ["form"]
            else ("use a data.prompt_template with only {" + next(iter(given)) + "} (and {form})")
        )
        problems.append(
            f"data.prompt_style={style} prompts need {', '.join(missing)}, which generation.eval_titles/"
            f"sample_titles/report cannot give: {fix}, or drop those settings"
        )
    if style is PromptStyle.first_line and cfg.generation.form and cfg.sample_titles:
        problems.append(
            "sample_titles with generation.form constrain whole poems, but data.prompt_style=first_line runs "
            "continue a first line: set generation.form=null or drop sample_titles"
        )
    return problems
