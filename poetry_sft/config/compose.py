"""Compose a run's config outside the command line, exactly as `poetry-sft train <overrides>` does.

One place for the recipes group and the Hydra compose call, used by the plan command, the benchmarks
and the tests.
"""

from __future__ import annotations

import difflib

from omegaconf import DictConfig, OmegaConf

from poetry_sft.config.checks import to_run_config
from poetry_sft.config.schema import RunConfig, key_problem, register_configs
from poetry_sft.errors import ConfigError
from poetry_sft.paths import CONF_DIR, RECIPES_DIR

# Hydra's command-line flags that take the next word as their value (poetry-sft train --help).
_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c"}
_FLAGS_WITH_VALUE |= {"--package", "-p", "--experimental-rerun"}


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
    return to_run_config(compose_config(overrides))


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
            skip_next = arg in _FLAGS_WITH_VALUE
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:
            key, _, value = arg.partition("=")
            if any(ord(c) > 127 for c in value):  # Hydra's grammar reads CJK text only in quotes
                items = [v.strip().strip("'\"") for v in value.strip("[]").split(",")]
                quoted = f"'{value}'"
                if value.startswith("["):
                    quoted = "[" + ",".join(f"'{v}'" for v in items) + "]"
                problems.append(
                    f"{arg}: Hydra reads Chinese text only in quotes.\n"
                    f'  Fix: quote it, "{key}={quoted}" (the outer quotes are for the shell)'
                )
            continue
        key = override.key_or_group
        if override.is_delete() or override.package is not None or key.split(".")[0] == "hydra":
            continue
        groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()} - {"hydra", "accelerate"} | {"recipe"}
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
