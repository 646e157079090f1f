"""The stages after SFT (train/stages.py, grpo.py, rejection.py, rewards.py): they start only from a finished
run, train what they should, end in a complete run directory, and resume after a kill."""

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, kill_at_checkpoint, run_config
from safetensors.torch import load_file

from poetry_sft.config.schema import CriticConfig
from poetry_sft.errors import ConfigError
from poetry_sft.poetry.critic import PENALTIES, WEIGHT_NAMES
from poetry_sft.run import artifacts
from poetry_sft.train.rewards import reward_functions
from poetry_sft.train.stages import resolve_init_run

FAST = [  # a stage of a few CPU seconds on the tiny model
    "train.logging_steps=1",
    "generation.eval_titles=['春晓','登高']",
    "generation.max_new_tokens=40",
    "stage.prompts=8",
]
GRPO = ["recipe=demo_grpo", *FAST, "hardware.per_device_train_batch_size=8", "stage.num_generations=4"]
GRPO += ["stage.max_completion_length=40", "train.max_steps=2", "train.save_steps=1000"]
RS = ["recipe=demo_rs", *FAST, "stage.samples=4", "stage.min_score=0", "train.max_steps=2"]
RS += ["train.eval_steps=1000", "train.save_steps=1000", "hardware.per_device_train_batch_size=4"]


@pytest.fixture(scope="module")
def lora_init(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: None) -> Path:
    """A finished tiny LoRA run on the shipped sample (its adapter is what a stage trains on)."""
    from poetry_sft.train.sft import train

    run_dir = tmp_path_factory.mktemp("stages") / "lora_init"
    overrides = ["model=tiny", "method=lora", "data=sample", "data.max_samples=200", "data.eval_size=8"]
    overrides += ["hardware.per_device_train_batch_size=8", "hardware.gradient_accumulation_steps=1"]
    overrides += [
        "hardware.max_length=128",
        "train.max_steps=3",
        "train.eval_steps=1000",
        "train.save_steps=1000",
    ]
    train(run_config(overrides + [f"run_dir={run_dir}"]), run_dir)
    return run_dir


def _stage_config(overrides: list[str], run_dir: Path):
    return resolve_init_run(run_config([*overrides, f"run_dir={run_dir}"]))


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def test_an_init_run_that_is_not_a_finished_run_is_refused_before_anything_loads(demo_runs: Path, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((demo_runs / "demo" / "config.yaml").read_text())
    cases = {
        tmp_path / "nowhere": "no such directory",
        tmp_path: "is not a poetry_sft run",
        unfinished: "has not finished training",
    }
    for init_run, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            _stage_config([*GRPO, f"init_run={init_run}"], tmp_path / "stage")
    with pytest.raises(ConfigError, match=r"stage=grpo improves a finished run: add init_run="):
        run_config(GRPO)
    # the command refuses it the same way, before Hydra writes anything
    result = subprocess.run(
        [PYTHON, "-m", "poetry_sft", *GRPO, f"init_run={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'x'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        result.returncode == 2 and "no such directory" in result.stderr and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "outputs").exists()


def test_a_stage_takes_its_model_and_prompts_from_the_init_run(demo_runs: Path, lora_init: Path, tmp_path):
    init = artifacts.load_run_config(demo_runs / "demo")
    cfg = _stage_config([*GRPO, f"init_run={demo_runs / 'demo'}", "data.rhyme_hint=true"], tmp_path)
    assert cfg.data == init.data  # the prompts it was trained with, whatever the command line said
    assert (
        cfg.model.name_or_path == str((demo_runs / "demo" / "model").resolve())
        and cfg.model.random_init is None
    )
    assert (
        cfg.method.name == "lora" and artifacts.init_adapter_dir(cfg) is None
    )  # a new adapter on a full run
    on_lora = _stage_config([*RS, f"init_run={lora_init}", "method=dora"], tmp_path)
    assert on_lora.method == artifacts.load_run_config(lora_init).method  # its adapter trains on
    assert artifacts.init_adapter_dir(on_lora) == Path(on_lora.init_run) / "model"


def test_rewards_are_the_critics_parts_graded_bounded_and_signed():
    weights = {**CriticConfig().__dict__}
    functions, signed = reward_functions(weights, None, eos_token_ids=[7])
    assert [f.__name__ for f in functions] == [n for n in WEIGHT_NAMES if weights[n] > 0]
    assert all((s < 0) == (f.__name__ in PENALTIES) for f, s in zip(functions, signed, strict=True))
    rng = random.Random(0)
    noise = [*(chr(c) for c in range(0x4E00, 0x4E00 + 300)), "，", "。", "\n"]
    poem = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"
    completions = [poem, poem.replace("楼", "台")]
    completions += ["".join(rng.choice(noise) for _ in range(rng.randrange(50))) for _ in range(30)]
    for _ in range(30):  # the same shape, characters shuffled: 平仄 partly kept, so tones are graded
        chars = [c for c in poem if "\u4e00" <= c <= "\u9fff"]
        rng.shuffle(chars)
        it = iter(chars)
        completions.append("".join(next(it) if "\u4e00" <= c <= "\u9fff" else c for c in poem))
    ids = [[1, 7] if i % 2 else [1, 2] for i in range(len(completions))]
    values = {
        f.__name__: f(completions=completions, completion_ids=ids, title=["黄河"] * len(ids))
        for f in functions
    }
    assert all(0.0 <= v <= 1.0 for part in values.values() for v in part)
    assert values["rhyme"][0] == 1.0 and values["rhyme"][1] == 0.5  # graded: half the even lines in one group
    assert values["no_eos"][0] == 1.0 and values["no_eos"][1] == 0.0  # ids ending in the end token stopped
    assert values["title_copy"][0] == 0.25  # 黄河 is in one of the four lines
    assert len({round(v, 3) for v in values["tones"]}) > 5  # graded, not pass/fail


def test_grpo_trains_a_new_adapter_on_the_init_model_and_writes_a_complete_run(demo_runs: Path, tmp_path):
    from poetry_sft.train.grpo import REWARD_CURVE_FILE, train

    run_dir = tmp_path / "grpo"
    cfg = _stage_config([*GRPO, f"init_run={demo_runs / 'demo'}"], run_dir)
    metrics = train(cfg, run_dir)
    adapter = _tensors(run_dir / "model")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b), "B starts at zero: nonzero means it trained"
    for name in (artifacts.CONFIG_FILE, artifacts.METRICS_FILE, artifacts.LOG_HISTORY_FILE, "README.md"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / REWARD_CURVE_FILE).is_file() and (run_dir / "eval_report.json").is_file()
    assert metrics["stage"] == "grpo" and metrics["global_step"] == 2
    assert set(metrics["rewards"]) >= {"total (weighted)", "rhyme", "form"}
    history = json.loads((run_dir / artifacts.LOG_HISTORY_FILE).read_text())
    assert any("rewards/rhyme/mean" in entry for entry in history)
    report = json.loads((run_dir / "eval_report.json").read_text())
    assert report["scores"]["base"]["n_poems"] == 2  # before (the demo model) vs after, same titles
    # what generate, the studio, merge and export read: an adapter on the init run's model
    from poetry_sft.evaluate.generate import generate_poems, load_run

    model, tokenizer, saved = load_run(run_dir)
    assert saved.init_run == str((demo_runs / "demo").resolve())
    assert generate_poems(model, tokenizer, ["春晓"], saved.data, saved.generation)[0].content


def test_rejection_sampling_keeps_the_critics_picks_and_trains_the_init_runs_adapter(
    lora_init: Path, tmp_path
):
    from poetry_sft.train.rejection import POEMS_FILE, REPORT_FILE, SAMPLES_DIR, train

    run_dir = tmp_path / "rs"
    cfg = _stage_config([*RS, f"init_run={lora_init}", "stage.real_poems=3"], run_dir)
    metrics = train(cfg, run_dir)
    report = json.loads((run_dir / SAMPLES_DIR / REPORT_FILE).read_text())
    kept = [json.loads(line) for line in (run_dir / SAMPLES_DIR / POEMS_FILE).read_text().splitlines()]
    assert report["kept"] + report["real_poems"] == len(kept) and report["real_poems"] == 3
    assert all(p["score"] is None or p["score"] >= 0 for p in kept)
    assert metrics["stage"] == "rejection" and metrics["rejection"] == report and metrics["global_step"] == 2
    before, after = _tensors(lora_init / "model"), _tensors(run_dir / "model")
    assert before.keys() == after.keys()  # the same adapter ...
    assert any(not torch.equal(before[k], after[k]) for k in before)  # ... trained on
    assert artifacts.is_finished(run_dir) and (run_dir / "eval_report.md").is_file()


def test_a_killed_grpo_run_resumes_from_its_checkpoint(demo_runs: Path, tmp_path):
    from poetry_sft.train.grpo import train

    steps = 4
    overrides = [*GRPO, f"init_run={demo_runs / 'demo'}", f"train.max_steps={steps}", "train.save_steps=2"]
    overrides += ["generation.report=false"]
    killed = tmp_path / "killed"
    kill_at_checkpoint([PYTHON, "-m", "poetry_sft", *overrides, f"run_dir={killed}"], killed, 2, tmp_path)
    assert not artifacts.is_finished(killed)
    metrics = train(_stage_config(overrides, killed), killed)  # the same command again, in-process
    assert metrics["resumed_from_step"] == 2 and metrics["global_step"] == steps
    assert artifacts.is_finished(killed)


def test_the_memory_plan_counts_what_grpo_holds_and_refuses_what_does_not_fit():
    from poetry_sft.model.plan import check_budget, plan_run

    real = ["model=qwen3_0.6b_random", "init_run=runs/any"]
    sft_plan = plan_run(run_config(["model=qwen3_0.6b_random", "recipe=lora_8gb"]))
    grpo_plan = plan_run(run_config([*real, "recipe=grpo_8gb"]))
    assert sft_plan and grpo_plan
    assert sft_plan[0].items["generation"] == 0 and grpo_plan[0].items["generation"] > 0
    assert "generation: KV cache" in grpo_plan[0].table() and "generation" not in sft_plan[0].table()
    longer = plan_run(run_config([*real, "recipe=grpo_8gb", "stage.max_completion_length=400"]))
    assert longer and longer[0].total > grpo_plan[0].total  # completion logits and KV cache grow
    full = ["recipe=grpo_t4", "method=full", "hardware.optimizer=adafactor"]
    with_reference = plan_run(run_config([*real, *full, "stage.beta=0.04"]))
    without = plan_run(run_config([*real, *full]))
    assert with_reference and without
    assert with_reference[0].items["reference"] == without[0].items["weights"] > 0  # a frozen copy
    too_big = [*real, "recipe=grpo_8gb", "hardware=4gb", "hardware.per_device_train_batch_size=32"]
    with pytest.raises(ConfigError, match="does not fit a 4 GiB card"):
        check_budget(
            run_config(
                [*too_big, "hardware.gradient_accumulation_steps=1", "stage.max_completion_length=512"]
            )
        )


def test_a_grpo_run_merges_like_any_lora_run(demo_runs: Path, tmp_path):
    """merge (and so export) reads a stage run as it reads any adapter run: the adapter on its base."""
    from poetry_sft.ship import merge
    from poetry_sft.train.grpo import train

    run_dir = tmp_path / "grpo"
    train(
        _stage_config([*GRPO, f"init_run={demo_runs / 'demo'}", "generation.report=false"], run_dir), run_dir
    )
    assert merge.main([str(run_dir)]) == 0
    check = json.loads((run_dir / "merged" / "merge_check.json").read_text())
    assert check["max_abs_logit_diff"] < 1e-3  # an fp32 base: the merge is exact
    from poetry_sft.evaluate.generate import generate_poems, load_model_dir

    model = load_model_dir(str(run_dir / "merged"))
    saved = artifacts.read_run_config(run_dir / "merged" / artifacts.RUN_CONFIG_IN_MODEL)
    from poetry_sft.model.loading import load_tokenizer

    tokenizer = load_tokenizer(str(run_dir / "merged"))
    assert generate_poems(model, tokenizer, ["春晓"], saved.data, saved.generation)[0].content


def test_a_rhyme_aware_runs_export_readme_and_model_card_ask_as_it_was_trained():
    from poetry_sft.config.schema import DataConfig
    from poetry_sft.data.prompts import example_request

    plain, hinted = DataConfig(path="sample"), DataConfig(path="sample", rhyme_hint=True)
    assert example_request(plain) == "以《春夜喜雨》为题，写一首古诗。"
    assert example_request(hinted).startswith(
        "以《春夜喜雨》为题，写一首古诗。押"
    ) and "韵脚可用：" in example_request(hinted)
    from poetry_sft.ship.export import export_readme

    cfg = run_config(["model=tiny", "data=sample", "data.rhyme_hint=true"])
    readme = export_readme("poet-f16.gguf", cfg, "f16")
    assert example_request(cfg.data) in readme and "rhyme-aware prompts" in readme
