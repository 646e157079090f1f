"""Compose a run's config outside the command line, exactly as `poetry-sft train <overrides>` does.

One place for the recipes group and the Hydra compose call, used by the plan command, the benchmarks
and the tests.
"""

from __future__ import annotations

import difflib

from omegaconf import DictConfig, OmegaConf

from poetry_sft.config.checks import to_run_config
from poetry_sft.config.schema import (
    RunConfig,
    key_is_section,
    key_problem,
    key_type_name,
    register_configs,
    schema_default,
)
from poetry_sft.errors import ConfigError
from poetry_sft.paths import CONF_DIR, RECIPES_DIR

# Hydra's command-line flags that take the next word as their value (poetry-sft train --help).
FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c"}
FLAGS_WITH_VALUE |= {"--package", "-p", "--experimental-rerun"}


def register_recipes() -> None:
    """recipes/NAME.yaml becomes the option `recipe=NAME`, applied on top of the defaults."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        store.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The DictConfig the command line would get (with the `hydra` node when asked)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    register_recipes()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


def run_config(overrides: list[str]) -> RunConfig:
    """The validated RunConfig of these overrides; a ConfigError in our words for a bad key or option."""
    if problems := override_problems(overrides):
        raise ConfigError("\n".join(problems))
    try:
        composed = compose_config(overrides)
    except Exception as err:  # Hydra's refusal (a type error, a group option of hydra/...): in our words
        if not is_hydra_user_error(err):
            raise
        raise ConfigError(hydra_error_message(err)) from err
    return to_run_config(composed)


def group_options(group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml (recipes/*.yaml for `recipe`)."""
    folder = RECIPES_DIR if group == "recipe" else CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def override_problems(argv: list[str]) -> list[str]:
    """Overrides on a command line that name a key the schema lacks, or a group option that does not
    exist, in our words (the key, the closest match, the allowed ones) before Hydra composes anything.
    Anything this cannot parse is left to Hydra, which reports it itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    parser = OverridesParser.create()
    problems, skip_next = [], False
    for arg in argv:
        if skip_next or arg.startswith("-"):
            skip_next = arg in FLAGS_WITH_VALUE
            continue
        try:
            override = parser.parse_override(arg)
        except Exception as err:
            problems.append(_unparsable(arg, err))
            continue
        key = override.key_or_group
        # Hydra's own keys and groups (hydra.sweep.dir=, hydra/sweeper=poetry_optuna, +hydra/..., ~hydra...)
        # and package overrides (group@pkg=option) are Hydra's to check: it names the options itself.
        if override.package is not None or key.split(".")[0].split("/")[0] == "hydra":
            continue
        groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()} - {"hydra", "accelerate"} | {"recipe"}
        if override.is_delete():
            problems += _deletion_problems(arg, key, groups)
            continue
        if key in groups and not override.is_add():
            given = override.value()
            values = given.list if isinstance(given, ChoiceSweep) else [given]
            options = group_options(key)
            for choice in values:
                if isinstance(choice, str) and choice not in options:
                    close = difflib.get_close_matches(choice, options, n=1)
                    hint = f" Did you mean {key}={close[0]}?" if close else ""
                    problems.append(
                        f"{key}={choice} is not an option of the {key} group.{hint}\n"
                        f"  Fix: choose one of {', '.join(options)}"
                        + (" (recipes/)" if key == "recipe" else f" (conf/{key}/)")
                    )
        elif key not in groups and (problem := key_problem(key)):
            problems.append(problem)
    return problems


def _unparsable(arg: str, err: Exception) -> str:
    """An override Hydra's grammar cannot read, in our words (Hydra's own says only where it stopped)."""
    key, _, value = arg.partition("=")
    if any(ord(c) > 127 for c in value):  # Hydra's grammar reads CJK text only in quotes
        items = [v.strip().strip("'\"") for v in value.strip("[]").split(",")]
        quoted = f"'{value}'"
        if value.startswith("["):
            quoted = "[" + ",".join(f"'{v}'" for v in items) + "]"
        return (
            f"{arg}: Hydra reads Chinese text only in quotes.\n"
            f'  Fix: quote it, "{key}={quoted}" (the outer quotes are for the shell)'
        )
    why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"{arg} is not an override Hydra can read ({why}).\n"
        "  Fix: write key=value; a list is [a,b] with both brackets; quote a value that holds spaces, "
        f"brackets, commas or quotes, \"{key}='...'\" (the outer quotes are for the shell)"
    )


# Groups every run needs: deleting one leaves the run without a model, method, card profile or data.
REQUIRED_GROUPS = ("model", "method", "hardware", "data")


def _deletion_problems(arg: str, key: str, groups: set[str]) -> list[str]:
    """`~key`: Hydra deletes a config group's choice or a key. Ours are all required or typed."""
    if key in REQUIRED_GROUPS:
        return [
            f"{arg} removes the {key} group, which every run needs.\n"
            f"  Fix: choose another option instead, {key}=<{' | '.join(group_options(key))}>"
        ]
    if key in groups or key.startswith("trainer."):
        return []  # an optional group (recipe, method_hardware) or a pass-through key: Hydra deletes it
    if problem := key_problem(key):
        return [problem]
    if key_is_section(key):
        return [
            f"{arg}: the schema's sections cannot be deleted ({key} holds typed keys, "
            "poetry_sft/config/schema.py).\n"
            f"  Fix: leave it out for its defaults, or set its keys, {key}.<key>=value"
        ]
    default = schema_default(key)
    shown = f"{key}={default} (the schema's default)" if default is not None else f"{key}=<a value>"
    return [
        f"{arg}: the schema's keys cannot be deleted ({key} always has a value, typed in "
        f"poetry_sft/config/schema.py).\n  Fix: set it instead, {shown}"
    ]


def is_hydra_user_error(err: BaseException) -> bool:
    """Hydra or OmegaConf refusing the command line or the composed config (not a crash of the run)."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, (CompactHydraException, OmegaConfBaseException))


def hydra_error_message(err: BaseException) -> str:
    """Hydra's or OmegaConf's refusal, as one paragraph that ends in a fix. Their own text names the
    problem well (the override, the value, the options) but no fix, and Hydra exits 1 where every user
    error of ours exits 2."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException, ValidationError

    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
    detail = cause or err
    # OmegaConf appends full_key / reference_type / object_type lines: the key is named in our words instead
    text = getattr(detail, "msg", None) or str(detail)
    lines = [line.rstrip() for line in str(text).strip().splitlines() if line.strip()]
    lines = [
        line for line in lines if not line.strip().startswith(("full_key:", "reference_type", "object_type"))
    ]
    key = getattr(detail, "full_key", None)
    head = str(err).strip().splitlines()[0] if cause is not None and str(err).strip() else ""
    if isinstance(err, MissingConfigException):  # an option of one of Hydra's groups (hydra/sweeper=...)
        lines = [line for line in lines if "search path" not in line.lower() and "provider=" not in line]
        fix = "choose one of the available options listed above (poetry-sft train --help lists ours)"
    elif isinstance(err, OverrideParseException):
        fix = "write key=value; quote a value that holds spaces, brackets, commas or quotes: \"key='...'\""
    elif isinstance(detail, ValidationError) and key and (kind := key_type_name(key)):
        default = schema_default(key)
        example = f", e.g. {key}={default}" if default is not None else ""
        fix = f"{key} takes {kind}{example}"
    elif isinstance(detail, ValidationError) and key:
        fix = f"give {key} a value of its type (poetry-sft train --cfg job prints every key with its value)"
    elif key:
        fix = f"correct or drop the override of {key} (poetry-sft train --cfg job prints the composed config)"
    else:
        fix = "correct that override (poetry-sft train --help lists the groups and options)"
    where = f"{key}: " if key and not head else ""
    body = "\n".join(
        [f"{where}{head + ': ' if head else ''}{lines[0] if lines else type(err).__name__}"] + lines[1:]
    )
    return f"{body}\n  Fix: {fix}"
