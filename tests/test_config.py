"""Composition and validation: every config file loads, bad input fails early with a useful message."""

import itertools
import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, run_config

from poetry_sft.paths import CONF_DIR, RECIPES_DIR

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def test_groups_are_the_documented_ones():
    readme = (CONF_DIR.parent / "README.md").read_text(encoding="utf-8")
    assert {"full", "lora", "qlora", "dora", "qdora", "rslora", "pissa"} <= set(METHODS)
    assert {"4gb", "8gb"} <= set(HARDWARE)
    undocumented = [name for name in METHODS + HARDWARE if f"`{name}`" not in readme]
    assert not undocumented, f"add them to README's configuration table: {undocumented}"


@pytest.mark.parametrize(("method", "hardware"), itertools.product(METHODS, HARDWARE))
def test_every_method_hardware_pair_composes_and_validates(method: str, hardware: str):
    cfg = run_config([f"method={method}", f"hardware={hardware}"])
    assert cfg.method.name == method
    assert cfg.hardware.name == hardware
    assert cfg.model.name_or_path == "Qwen/Qwen3-0.6B"
    assert cfg.data.path == "larryvrh/Chinese-Poems"
    # the same effective batch everywhere, so a learning rate means the same on every card
    assert cfg.hardware.per_device_train_batch_size * cfg.hardware.gradient_accumulation_steps == 32
    if cfg.method.quantized:
        assert cfg.optimizer == "paged_adamw_8bit"


def test_method_hardware_specialisation_applies():
    assert run_config(["method=full", "hardware=8gb"]).optimizer == "adafactor"  # fp32 masters: see the YAML
    assert run_config(["method=lora", "hardware=8gb"]).optimizer == "adamw_torch"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_validates(recipe: str):
    header = (RECIPES_DIR / f"{recipe}.yaml").read_text(encoding="utf-8")
    assert f"recipe={recipe}" in header, "a recipe's header gives the exact command"
    # a stage recipe starts from a finished run, given on its command line (init_run=runs/<run>)
    stage = ["init_run=runs/any"] if "init_run=" in header else []
    cfg = run_config([f"recipe={recipe}", *stage])
    named = {"sft": cfg.method.name, "grpo": "grpo", "rejection": "rs"}[str(cfg.stage.name)]
    assert named in recipe or recipe == "demo"  # a recipe's name says what it trains


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "poetry_sft", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method=qlroa", ["qlroa", "full", "lora", "qlora"]),
        ("hardware=16gb", ["16gb", "4gb", "8gb"]),
        ("method.lora_rank=8", ["lora_rank"]),
        ("method.learning_rate=-1e-4", ["method.learning_rate", "positive"]),
        ("hardware.per_device_train_batch_size=two", ["per_device_train_batch_size", "two"]),
        ("method.optimizer=adam", ["method.optimizer", "paged_adamw_8bit"]),
    ],
)
def test_bad_config_fails_before_anything_is_written(tmp_path: Path, override: str, expected: list[str]):
    run_dir = tmp_path / "run"
    result = run_cli(override, f"run_dir={run_dir}", cwd=tmp_path)
    assert result.returncode != 0
    for word in expected:
        assert word in result.stderr, result.stderr
    assert not run_dir.exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("+train.lerning_rate=1", ["train.lerning_rate", "Did you mean method.learning_rate?"]),
        ("+method.lora_rnk=4", ["method.lora_rnk", "lora_alpha, lora_dropout"]),
        ("+foo=1", ["unknown config key foo", "data, generation, hardware"]),
        ("+model.random_init.hiden_size=8", ["Did you mean model.random_init.hidden_size?"]),
    ],
)
def test_appended_keys_the_schema_lacks_are_refused(override: str, words: list[str]):
    """Hydra's hint for a misspelled key is `+key=value`; that appends to the structured node, and
    OmegaConf.to_object silently drops it: composing must refuse it like the misspelling itself."""
    from poetry_sft.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run_config(["model=tiny", "data=sample", override])
    for word in words:
        assert word in str(err.value)
    assert "Fix: use one of" in str(err.value)


def test_the_trainer_pass_through_stays_open():
    assert run_config(["+trainer.neftune_noise_alpha=5"]).trainer == {"neftune_noise_alpha": 5}


def test_finished_run_is_never_overwritten(tmp_path: Path):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"eval_loss": 1.0}))
    result = run_cli("model=tiny", "data=sample", f"run_dir={run_dir}", cwd=tmp_path)
    assert result.returncode != 0
    assert "finished run" in result.stderr and "run_dir=" in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.json"]  # Hydra wrote nothing into it
    assert json.loads((run_dir / "metrics.json").read_text()) == {"eval_loss": 1.0}


def test_cfg_job_prints_the_composed_config(tmp_path: Path):
    result = run_cli("--cfg", "job", "method=qlora", "hardware=4gb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: qlora" in result.stdout and "vram_gib: 4" in result.stdout
    assert "bnb_4bit_quant_type: nf4" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=qwen3_0.6b", "data=sample"], ["Qwen/Qwen3-0.6B", "model.name_or_path=", "model=tiny"]),
        (["model=tiny", "data=hub"], ["larryvrh/Chinese-Poems", "data.path=", "data=sample"]),
        (["model=tiny", "data.path=missing.parquet"], ["missing.parquet", "data.path="]),
    ],
)
def test_unreachable_hub_gives_a_fix_not_a_traceback(
    tmp_path: Path, overrides: list[str], expected: list[str]
):
    result = run_cli(*overrides, f"run_dir={tmp_path / 'run'}", "train.max_steps=1", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for word in expected:
        assert word in result.stderr, result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_run_dir_names_the_choices():
    cfg = run_config(["method=qlora", "hardware=4gb", "model=tiny"])
    assert cfg.run_dir.endswith("_tiny_qlora_4gb"), cfg.run_dir


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["method=full", "method.base=bnb_4bit"], ["method.trains=all", "method.base=bnb_4bit", "Fix"]),
        (["method=qlora", "method.init_lora_weights=pissa"], ["pissa", "method=pissa"]),
        (["method=full", "method.use_dora=true"], ["method.use_dora", "would do nothing"]),
        (
            ["method=lora", "method.init_lora_weights=svd"],
            ["method.init_lora_weights='svd'", "pissa_niter_N"],
        ),
    ],
)
def test_trait_combinations_that_cannot_train_are_refused(overrides: list[str], words: list[str]):
    from poetry_sft.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run_config(overrides)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_a_run_saved_by_an_earlier_version_still_loads_and_resumes(tmp_path: Path):
    from omegaconf import OmegaConf

    from poetry_sft.run import artifacts

    cfg = run_config(["model=tiny", "data=sample", "method=lora"])
    artifacts.save_run_config(cfg, tmp_path)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    saved.data.name = "sample"  # a key earlier versions wrote and the schema has dropped
    del saved.generation["penalize_punctuation"]  # an option added since
    OmegaConf.save(saved, tmp_path / "config.yaml")
    loaded = artifacts.load_run_config(tmp_path)
    assert loaded.generation.penalize_punctuation is True and loaded.data.path == "sample"
    artifacts.ensure_same_config(tmp_path, cfg)  # the same run: resuming it is not refused
    with pytest.raises(Exception, match="different config"):
        artifacts.ensure_same_config(tmp_path, run_config(["model=tiny", "data=sample", "method=dora"]))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["generation.rhyme_group='七阳'"], "rhyme_group needs generation.form"),
        (["generation.form='五言绝句'", "generation.rhyme_group='不是韵'"], "rhyme_group: rhyme group"),
    ],
)
def test_rhyme_group_is_checked_with_the_config(overrides: list[str], expected: str):
    from poetry_sft.errors import ConfigError

    with pytest.raises(ConfigError, match=expected):
        run_config(["model=tiny", "data=sample", *overrides])
    run_config(["model=tiny", "data=sample", "generation.form='五言绝句'", "generation.rhyme_group='七阳'"])
