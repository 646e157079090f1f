"""`poetry-sft doctor`: what this machine can train, before the first run.

Versions (torch, CUDA, bitsandbytes, transformers, TRL, peft), the card (name, VRAM, compute capability,
native bf16), the hardware profile and precision a run would pick, and free disk for the Hugging Face
cache. Also the two preflight checks users hit most on a new machine: a GPU profile on a CPU-only torch
(PyPI's Windows wheel is CPU-only) and bitsandbytes that cannot load (Windows without a matching wheel,
cards it does not support).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from poetry_sft.errors import ConfigError, command
from poetry_sft.paths import CONF_DIR

if TYPE_CHECKING:
    from poetry_sft.config.schema import RunConfig

log = logging.getLogger(__name__)

CUDA_TORCH = {  # the command that gets a CUDA build of the pinned torch, per platform
    "win32": "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128",
    "linux": "pip install torch==2.13.0   (PyPI's Linux wheel is the CUDA build)",
    "darwin": "macOS has no CUDA: the CPU demo (model=tiny) runs; train on Colab "
    "(notebooks/colab_t4_qlora.ipynb)",
}
# An order of magnitude, for the warning only: a training step costs ~6 x 0.6e9 FLOPs per token for
# Qwen3-0.6B, and a desktop CPU sustains some 50-100 GFLOP/s in fp32 matmuls: ~10-30 tokens/s.
CPU_QWEN_TOKENS_PER_S = 20.0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def profiles() -> dict[str, float]:
    """Hardware profile name -> the card's GiB, from conf/hardware/."""
    return {p.stem: float(OmegaConf.load(p).vram_gib) for p in sorted((CONF_DIR / "hardware").glob("*.yaml"))}


def pick_profile(vram_gib: float) -> str:
    """The largest profile whose card is no bigger than this one (the T4's own for a Tesla T4)."""
    fitting = [(gib, name) for name, gib in profiles().items() if gib <= vram_gib + 0.5 and name != "t4"]
    return max(fitting)[1] if fitting else min((gib, n) for n, gib in profiles().items())[1]


def report() -> str:
    import torch

    from poetry_sft.config.schema import Precision
    from poetry_sft.model.loading import precision_choice

    lines = [f"python {sys.version.split()[0]} on {sys.platform}"]
    for package in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"):
        lines.append(f"{package:<13}{_version(package)}")
    cuda = torch.cuda.is_available()
    lines.append(f"{'CUDA':<13}{torch.version.cuda or 'none (CPU-only torch build)'}; available: {cuda}")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        vram = props.total_memory / 2**30
        major, minor = torch.cuda.get_device_capability(0)
        profile = "t4" if "T4" in torch.cuda.get_device_name(0) else pick_profile(vram)
        lines += [
            f"{'card':<13}{torch.cuda.get_device_name(0)}, {vram:.1f} GiB, "
            f"compute capability {major}.{minor}",
            f"{'native bf16':<13}{'yes' if major >= 8 else 'no (emulated only: fp16 is used)'}",
            f"{'profile':<13}hardware={profile}  (poetry-sft train hardware={profile})",
        ]
    else:
        lines += [
            "card         none: CPU only. Real training needs a CUDA torch:",
            f"             {CUDA_TORCH.get(sys.platform, CUDA_TORCH['linux'])}",
            "profile      the offline demo runs on CPU: poetry-sft train recipe=demo",
        ]
    lines.append(f"{'precision':<13}{precision_choice(Precision.auto)[1]}")
    lines.append(f"{'bitsandbytes':<13}{bitsandbytes_problem() or 'loads (qlora and 8-bit optimizers work)'}")
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    existing = next((p for p in (cache, *cache.parents) if p.exists()), Path.home())
    free = shutil.disk_usage(existing).free / 2**30
    lines.append(
        f"{'disk':<13}{free:.1f} GiB free for the Hugging Face cache ({cache}); Qwen3-0.6B needs ~1.5"
    )
    return "\n".join(lines)


def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes cannot be used here, or None."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # its import fails in many ways: missing CUDA libs, no wheel for the platform
        return f"bitsandbytes does not load here ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def check_environment(cfg: RunConfig) -> None:
    """Preflight: refuse what cannot run here, and warn loudly about a GPU profile on a CPU-only torch."""
    needs_bnb = cfg.method.quantized or "8bit" in cfg.optimizer
    if needs_bnb and (problem := bitsandbytes_problem()):
        what = f"method={cfg.method.name}" if cfg.method.quantized else f"optimizer {cfg.optimizer}"
        raise ConfigError(
            f"{what} needs bitsandbytes, but {problem}. Fix: use method=lora (a 16-bit base, no "
            "bitsandbytes) and hardware.optimizer=adamw_torch, or install a bitsandbytes build for this "
            "machine (pip install -U bitsandbytes; on Windows it needs a CUDA torch)"
        )
    import torch

    if torch.cuda.is_available() or cfg.model.random_init is not None:
        return
    hours = _cpu_hours(cfg)
    log.warning(
        "\n%s\n  No CUDA GPU: torch %s is a CPU-only build (or no card is visible). "
        "hardware=%s is a GPU profile;\n  on this CPU the run would take roughly %s.\n"
        "  Install a CUDA torch: %s\n"
        "  Check: poetry-sft doctor.  (The offline CPU demo: poetry-sft train recipe=demo)\n%s",
        "!" * 100,
        torch.__version__,
        cfg.hardware.name,
        f"{hours:,.0f} hours" if hours >= 1 else "under an hour",
        CUDA_TORCH.get(sys.platform, CUDA_TORCH["linux"]),
        "!" * 100,
    )


def _cpu_hours(cfg: RunConfig) -> float:
    """Tokens of the run over a CPU's speed for a 0.6B model: an order of magnitude, not a promise."""
    poems = 321_000 * (1 - 0.01) if cfg.data.max_samples is None else cfg.data.max_samples
    epochs = cfg.train.num_train_epochs
    if cfg.train.max_steps > 0:
        batch = cfg.hardware.per_device_train_batch_size * cfg.hardware.gradient_accumulation_steps
        poems, epochs = cfg.train.max_steps * batch, 1.0
    tokens = poems * epochs * 77  # mean tokens per poem with the chat prompt (../shared/data/README.md)
    return tokens / CPU_QWEN_TOKENS_PER_S / 3600


@command
def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="poetry-sft doctor", description=__doc__.splitlines()[0]).parse_args(argv)
    print(report())
    return 0
