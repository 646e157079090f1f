"""The README's plan table: every method x hardware profile in conf/, planned for Qwen3-0.6B's shape.

python bench/plan_table.py      # markdown rows, GiB on the card incl. CUDA context
"""

from __future__ import annotations

from omegaconf import OmegaConf

from poetry_sft.config.compose import run_config
from poetry_sft.errors import ConfigError
from poetry_sft.model.memory import GIB
from poetry_sft.model.plan import check_budget, plan_run
from poetry_sft.paths import CONF_DIR


def main() -> None:
    methods = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    cards = {p.stem: OmegaConf.load(p).vram_gib for p in (CONF_DIR / "hardware").glob("*.yaml")}
    profiles = sorted(cards, key=lambda name: (cards[name], name))
    print("| method \\ hardware | " + " | ".join(profiles) + " |")
    print("|---" * (len(profiles) + 1) + "|")
    for method in methods:
        cells = []
        for profile in profiles:
            cfg = run_config(["model=qwen3_0.6b_random", f"method={method}", f"hardware={profile}"])
            planned = plan_run(cfg)
            assert planned is not None
            try:
                check_budget(cfg)
                cells.append(f"{planned[0].total / GIB:.2f}")
            except ConfigError:
                cells.append(f"refused ({planned[0].total / GIB:.2f})")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
