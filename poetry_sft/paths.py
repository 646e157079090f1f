"""Where the package finds its config tree, recipes, shipped data and cache.

In a source checkout (``pip install -e .``) ``conf/`` and ``recipes/`` sit beside the package; a
wheel carries them inside it as ``_conf``/``_recipes`` (see pyproject's force-include).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR / "resources"
SAMPLE_POEMS = RESOURCES_DIR / "poems_sample.jsonl"
IMAGERY_WORDS = RESOURCES_DIR / "imagery.txt"  # 意象 for data.prompt_style=keywords


def _bundled(name: str, fallback: str) -> Path:
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / fallback


CONF_DIR = _bundled("_conf", "conf")
RECIPES_DIR = _bundled("_recipes", "recipes")


def cache_dir() -> Path:
    """Locally built artifacts (random-init models, tokenizers). Override with POETRY_SFT_CACHE."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "poetry_sft"
    return Path(os.environ.get("POETRY_SFT_CACHE", default))
