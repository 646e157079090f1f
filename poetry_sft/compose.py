"""Compose a run's config outside the command line, exactly as `python -m poetry_sft <overrides>` does.

One place for the recipes group and the Hydra compose call, used by the plan command, the benchmarks
and the tests.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from poetry_sft.config import RunConfig, register_configs, to_run_config
from poetry_sft.paths import CONF_DIR, RECIPES_DIR


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
    """The validated RunConfig of these overrides."""
    return to_run_config(compose_config(overrides))
