"""The rules of a run's config that need more than the schema: the optimizers the memory plan models,
the forms of the poetry domain, the prompts a template makes.

`schema.py` is the schema and imports nothing of ours but errors; rules that need the domain live here,
above it, so every concept keeps one home. `to_run_config` is the one way from a composed DictConfig to
a validated RunConfig (the command line, `compose.run_config`, the sweep), and `validate` the one way
to check a RunConfig read back from disk.
"""

from __future__ import annotations

import copy
import dataclasses

from omegaconf import DictConfig, OmegaConf, open_dict

from poetry_sft.config.schema import (
    OPTIMIZERS,
    Precision,
    PromptStyle,
    RunConfig,
    SamplingConfig,
    Stage,
    rule_problems,
    schema_problems,
)
from poetry_sft.config.templates import PROMPT_SUBJECT, PROMPT_TEMPLATES, prompt_fields, prompt_template
from poetry_sft.errors import ConfigError
from poetry_sft.poetry import CORPUS_FORMS, FORMS, find_rhyme_group
from poetry_sft.poetry.critic import check_weights
from poetry_sft.poetry.rhyme_hint import COMMON_POOL, find_level_group


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
    problems += sampling_problems(cfg.generation, rhyme_hint=cfg.data.rhyme_hint)
    problems += [f"critic: {problem}" for problem in check_weights(dataclasses.asdict(cfg.critic))]
    problems += _stage_problems(cfg)
    if not 1 <= cfg.data.rhyme_hint_chars <= COMMON_POOL:
        problems.append(
            f"data.rhyme_hint_chars={cfg.data.rhyme_hint_chars} must be in [1, {COMMON_POOL}] (the hint "
            f"lists characters from a group's {COMMON_POOL} commonest rhymes)"
        )
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


# Longer than any poem by far (a 七言律诗 is 67 characters, 长恨歌 840): a model that never ends its poem
# would write for hours (a tiny model, 100M tokens: forever)
MAX_NEW_TOKENS = 4096


def sampling_problems(
    gen: SamplingConfig, key: str = "generation", as_flags: bool = False, rhyme_hint: bool = False
) -> list[str]:
    """What is wrong with sampling settings (shared by the config and the generate command's flags, which
    `as_flags` names as --max-new-tokens, ...). `rhyme_hint`: the run's prompts name a rhyme group
    (data.rhyme_hint), so rhyme_group needs no form."""

    def name(field: str) -> str:
        return f"--{field.replace('_', '-')}" if as_flags else f"{key}.{field}"

    def given(field: str) -> str:
        return f"{name(field)} {getattr(gen, field)}" if as_flags else f"{name(field)}={getattr(gen, field)}"

    problems = []
    if gen.best_of < 1:
        problems.append(f"{given('best_of')} must be at least 1 (1: plain sampling; N: the critic's best)")
    if gen.best_of > 1 and not gen.do_sample:
        problems.append(
            f"{given('best_of')} needs sampling: greedy decoding (--greedy, {key}.do_sample=false) writes "
            "the same poem every time. Fix: drop --greedy, or best_of=1"
        )
    for field in ("max_new_tokens", "batch_size", "num_eval_poems", "eval_max_new_tokens"):
        if getattr(gen, field) <= 0:
            problems.append(f"{given(field)} must be a positive integer")
    for field in ("max_new_tokens", "eval_max_new_tokens"):
        if getattr(gen, field) > MAX_NEW_TOKENS:
            problems.append(
                f"{given(field)} is far longer than any poem (a 七言律诗 is 67 characters, 长恨歌 840): a "
                f"model that does not end its poem would write for hours; at most {MAX_NEW_TOKENS} "
                "(the default is 128)"
            )
    if gen.do_sample and not gen.temperature > 0:
        greedy = "--greedy" if as_flags else f"{key}.do_sample=false"
        problems.append(f"{given('temperature')} must be > 0 when sampling (or {greedy})")
    if not 0 < gen.top_p <= 1:
        problems.append(f"{given('top_p')} must be in (0, 1]")
    if gen.top_k < 0:
        problems.append(f"{given('top_k')} must be >= 0 (0: no top-k filtering)")
    if not gen.repetition_penalty > 0:
        problems.append(f"{given('repetition_penalty')} must be > 0 (1: none)")
    if gen.form is not None and gen.form not in FORMS:
        problems.append(f"{name('form')}={gen.form!r} is not one of {', '.join(FORMS)} (or null: any form)")
    if gen.showcase and not gen.report:
        problems.append(
            f"{name('showcase')}=true shows the eval report's poems: set {name('report')}=true too"
        )
    if gen.rhyme and gen.form is None:
        rhyme = name("rhyme") + ("" if as_flags else "=true")
        problems.append(f"{rhyme} needs {name('form')}: rhyme is enforced within a regulated form")
    if gen.rhyme_group is not None:
        if gen.form is None and not rhyme_hint:
            problems.append(
                f"{name('rhyme_group')} needs {name('form')} (rhyme is enforced within a regulated form) or "
                "a run with rhyme-aware prompts (data.rhyme_hint=true), whose prompts ask for the group"
            )
        try:
            if rhyme_hint and gen.form is None:
                find_level_group(gen.rhyme_group)
            else:
                find_rhyme_group(gen.rhyme_group)
        except ValueError as err:
            problems.append(f"{name('rhyme_group')}: {err}")
    return problems


def _stage_problems(cfg: RunConfig) -> list[str]:
    """The stage's settings and its start (whether init_run holds a finished run is checked before training,
    in train/stages.py: reading a directory is not a config rule)."""
    stage, problems = cfg.stage, []
    if stage.name is Stage.sft:
        if cfg.init_run is not None:
            problems.append(
                f"init_run={cfg.init_run} is where stage=rejection or stage=grpo start; an SFT run starts "
                "from model=... . Fix: drop init_run, or add stage=grpo (or recipe=demo_grpo)"
            )
        return problems
    if not cfg.init_run:
        problems.append(
            f"stage={stage.name} improves a finished run: add init_run=runs/<run> (the demo's run: "
            "poetry-sft train recipe=demo writes one)"
        )
    for name in ("prompts", "samples", "max_completion_length"):
        if getattr(stage, name) < 1:
            problems.append(f"stage.{name}={getattr(stage, name)} must be at least 1")
    if stage.real_poems < 0:
        problems.append(f"stage.real_poems={stage.real_poems} must be >= 0 (0: only the critic's picks)")
    if not stage.min_score <= 1:
        problems.append(
            f"stage.min_score={stage.min_score} is above the critic's best, 1: no poem would pass"
        )
    if not stage.temperature > 0:
        problems.append(f"stage.temperature={stage.temperature} must be > 0 (GRPO compares sampled poems)")
    if not stage.beta >= 0:
        problems.append(f"stage.beta={stage.beta} must be >= 0 (0: no KL penalty to the start model)")
    if stage.name is Stage.grpo:
        hardware = cfg.hardware
        completions = hardware.per_device_train_batch_size * hardware.gradient_accumulation_steps
        if stage.num_generations < 2:
            problems.append(
                f"stage.num_generations={stage.num_generations}: GRPO compares each poem with the others of "
                "its group, so it needs at least 2 (4-8 is usual)"
            )
        elif completions % stage.num_generations:
            problems.append(
                f"GRPO trains on whole groups: hardware.per_device_train_batch_size x "
                f"gradient_accumulation_steps = {completions} completions a step is not a multiple of "
                f"stage.num_generations={stage.num_generations}. Fix: choose a divisor of {completions} for "
                "stage.num_generations, or change the batch"
            )
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
