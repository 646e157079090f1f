"""The memory plan wired to the configs: every meant-to-run profile fits, full@4gb is refused early."""

import itertools
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, run_config
from omegaconf import OmegaConf

from poetry_sft.errors import ConfigError
from poetry_sft.model.memory import GIB
from poetry_sft.model.plan import check_budget, training_shape
from poetry_sft.paths import CONF_DIR

QWEN_SHAPE = "model=qwen3_0.6b_random"  # Qwen3-0.6B's exact shape; nothing is built to plan it
METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
# every profile but full fine-tuning on cards under 8 GB is meant to run
FITTING = [
    (m, h)
    for m, h in itertools.product(METHODS, HARDWARE)
    if not (m == "full" and OmegaConf.load(CONF_DIR / "hardware" / f"{h}.yaml").vram_gib < 8)
]


@pytest.mark.parametrize(("method", "hardware"), FITTING)
def test_every_profile_meant_to_run_fits_its_card(method: str, hardware: str):
    cfg = run_config([QWEN_SHAPE, f"method={method}", f"hardware={hardware}"])
    plan = check_budget(cfg)
    assert plan is not None and plan.total < 0.95 * cfg.hardware.vram_gib * GIB


def test_full_fine_tuning_on_4gb_is_refused_with_the_breakdown_and_fixes():
    cfg = run_config([QWEN_SHAPE, "method=full", "hardware=4gb"])
    with pytest.raises(ConfigError) as err:
        check_budget(cfg)
    message = str(err.value)
    for words in ("does not fit", "weights", "optimizer", "method=qlora", "hardware.allow_over_budget=true"):
        assert words in message, message


def test_over_budget_opt_in_lets_the_run_through():
    cfg = run_config([QWEN_SHAPE, "method=full", "hardware=4gb", "hardware.allow_over_budget=true"])
    assert check_budget(cfg).total > 4 * GIB


def test_the_shape_follows_the_config():
    shape = training_shape(run_config([QWEN_SHAPE, "method=qlora", "hardware=4gb"]))
    assert (shape.method, shape.optimizer, shape.weight_dtype) == ("qlora", "paged_adamw_8bit", "bf16")
    assert shape.gradient_checkpointing and shape.micro_batch_size == 4 and shape.seq_len == 256
    assert not shape.padded, "sdpa trains padding-free"
    assert training_shape(run_config([QWEN_SHAPE, "model.attn_implementation=flex_attention"])).padded
    smoothed = run_config([QWEN_SHAPE, "method=lora", "+trainer.label_smoothing_factor=0.1"])
    assert training_shape(run_config([QWEN_SHAPE, "method=lora"])).chunked_loss
    assert not training_shape(smoothed).chunked_loss, "full logits: the plan must count them"
    with pytest.raises(ConfigError, match="does not fit"):  # 151k-wide logits of 8 x 256 tokens
        check_budget(smoothed)


def test_over_budget_run_fails_before_anything_is_written(tmp_path: Path):
    run_dir = tmp_path / "run"
    cmd = [PYTHON, "-m", "poetry_sft", QWEN_SHAPE, "method=full", "hardware=4gb", f"run_dir={run_dir}"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "does not fit" in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_plan_command_prints_the_table(tmp_path: Path):
    cmd = [PYTHON, "-m", "poetry_sft", "plan", QWEN_SHAPE, "method=qlora", "hardware=4gb"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "weights" in result.stdout and "fits:" in result.stdout


def test_dora_plans_its_magnitude_vectors_and_weight_norms():
    lora, dora = (training_shape(run_config([QWEN_SHAPE, f"method={m}"])) for m in ("lora", "dora"))
    assert not lora.dora and dora.dora
    from poetry_sft.model.memory import plan_memory
    from poetry_sft.model.plan import architecture

    qwen = architecture(run_config([QWEN_SHAPE]))
    assert qwen is not None
    lora_plan, dora_plan = plan_memory(qwen, lora), plan_memory(qwen, dora)
    # q/k/v/o output rows per layer, fp32: the magnitude vectors
    rows = sum(qwen.linear_shapes()[n][1] for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert dora_plan.items["lora"] - lora_plan.items["lora"] == rows * qwen.num_hidden_layers * 4
    assert dora_plan.items["activations"] > lora_plan.items["activations"]
    assert dora_plan.items["recompute"] > lora_plan.items["recompute"]
