"""End to end on CPU with the tiny Qwen3: what each method trains, saves and reloads."""

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import run_config, tiny_overrides

from poetry_sft.evaluate.generate import generate_poems, load_run
from poetry_sft.run import artifacts
from poetry_sft.train.sft import build_trainer, train


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_methods_train_the_adapter_and_freeze_the_base(method: str, poems_file: Path, tmp_path: Path):
    trainer = build_trainer(run_config(tiny_overrides(method, poems_file, steps=3)), tmp_path)
    before = _snapshot(trainer.model)
    trainer.train()
    after = dict(trainer.model.named_parameters())

    lora = [n for n in before if "lora_" in n]
    assert lora and all(after[n].requires_grad for n in lora)
    assert all(not torch.equal(before[n], after[n]) for n in lora), "every adapter weight moved"
    base = [n for n in before if "lora_" not in n]
    assert all(not after[n].requires_grad and torch.equal(before[n], after[n]) for n in base)


@pytest.mark.parametrize("method", ["dora", "qdora", "rslora", "pissa"])
def test_lora_variants_train_their_adapter_and_freeze_the_base(method: str, poems_file: Path, tmp_path: Path):
    cfg = run_config(tiny_overrides(method, poems_file, steps=3) + ["train.warmup_ratio=0"])
    trainer = build_trainer(cfg, tmp_path)
    config = trainer.model.peft_config["default"]
    assert (config.use_dora, config.use_rslora) == (cfg.method.use_dora, cfg.method.use_rslora)
    assert (method == "pissa") == str(config.init_lora_weights).startswith("pissa")
    before = _snapshot(trainer.model)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    trained = [n for n in before if after[n].requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert all(not torch.equal(before[n], after[n]) for n in trained), "every adapter tensor moved"
    magnitudes = [n for n in trained if "lora_magnitude_vector" in n]
    assert bool(magnitudes) == cfg.method.use_dora
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trained), "the base is frozen"


def test_qlora_adapters_train_in_fp32_so_small_steps_survive(poems_file: Path, tmp_path: Path):
    overrides = tiny_overrides("qlora", poems_file, steps=3) + [
        "train.warmup_ratio=0",
        "model.random_init.initializer_range=0.02",
    ]
    trainer = build_trainer(run_config(overrides), tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all(p.dtype == torch.float32 for p in before.values())
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = [(after[n] != before[n]).float().mean().item() for n in before if "lora_A" in n]
    assert min(moved) >= 0.99, moved  # bf16 adapters (TRL's cast): 25% of lora_A elements moved


def test_qlora_uses_a_4bit_base_and_paged_8bit_adamw(poems_file: Path, tmp_path: Path):
    import bitsandbytes as bnb

    trainer = build_trainer(run_config(tiny_overrides("qlora", poems_file, steps=1)), tmp_path)
    quantized = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.quant_type == "nf4" for m in quantized)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    # transformers builds paged_adamw_8bit as bitsandbytes' AdamW with these two switches
    assert isinstance(optimizer, bnb.optim.AdamW)
    assert optimizer.is_paged and optimizer.args.optim_bits == 8


def test_full_fine_tuning_changes_every_weight(poems_file: Path, tmp_path: Path):
    trainer = build_trainer(run_config(tiny_overrides("full", poems_file, steps=2)), tmp_path)
    before = _snapshot(trainer.model)
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert sorted(changed) == sorted(before)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_run_directory_reloads_and_generates(method: str, poems_file: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    metrics = train(run_config(tiny_overrides(method, poems_file, steps=3)), run_dir)

    saved = {p.name for p in (run_dir / artifacts.MODEL_DIR).iterdir()}
    assert "tokenizer.json" in saved
    if method == "full":
        assert "model.safetensors" in saved
    else:
        assert {"adapter_model.safetensors", "adapter_config.json"} <= saved
        assert "model.safetensors" not in saved, "adapter runs never save base weights"
    assert artifacts.is_finished(run_dir)
    assert metrics["global_step"] == 3 and metrics["trained_tokens"] > 0 and metrics["eval_loss"] > 0

    model, tokenizer, cfg = load_run(run_dir)
    assert cfg.method.name == method
    assert (type(model).__name__ == "PeftModelForCausalLM") == (method != "full")
    poems = generate_poems(model, tokenizer, ["静夜思", "春晓"], cfg.data, max_new_tokens=12)
    assert len(poems) == 2 and all(poem.content for poem in poems)


def test_finished_run_directory_is_refused(poems_file: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    train(run_config(tiny_overrides("lora", poems_file, steps=1)), run_dir)
    adapter = (run_dir / "model" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(artifacts.RunDirError, match="finished run"):
        train(run_config(tiny_overrides("lora", poems_file, steps=1)), run_dir)
    assert (run_dir / "model" / "adapter_model.safetensors").read_bytes() == adapter


@pytest.mark.parametrize("method", ["full", "lora"])
def test_loss_falls_on_a_memorisable_set(method: str, poems_file: Path, tmp_path: Path):
    overrides = tiny_overrides(method, poems_file, steps=40) + [
        "method.learning_rate=3e-3" if method == "full" else "method.learning_rate=3e-2",
        "train.warmup_ratio=0",
    ]
    trainer = build_trainer(run_config(overrides), tmp_path)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, losses


def test_trainer_pass_through_reaches_sft_config_and_typos_are_refused(poems_file: Path, tmp_path: Path):
    from poetry_sft.train.sft import trainer_problems

    overrides = tiny_overrides("lora", poems_file, steps=1) + ["+trainer.neftune_noise_alpha=5"]
    trainer = build_trainer(run_config(overrides), tmp_path)
    assert trainer.args.neftune_noise_alpha == 5
    typo = run_config(
        [
            "+trainer.neftun_noise_alpha=5",
            "+trainer.learning_rate=1",
            "+trainer.seed=3",
            "+trainer.packing=yes",
        ]
    )
    problems = trainer_problems(typo)
    assert "Did you mean trainer.neftune_noise_alpha?" in problems[0]
    assert "trainer.learning_rate is set by our config. Fix: use method.learning_rate instead" in problems[1]
    assert "use train.seed instead" in problems[2]
    assert (
        "trainer.packing='yes' must be true or false" in problems[3] and "trainer.packing=true" in problems[3]
    )


def test_a_saved_tokenizer_with_batch_padding_loads_unpadded(poems_file: Path, tmp_path: Path):
    from poetry_sft.model.loading import load_tokenizer, resolve_model_path

    cfg = run_config(tiny_overrides("lora", poems_file))
    tokenizer = load_tokenizer(resolve_model_path(cfg.model))
    tokenizer.padding_side = "left"
    tokenizer.backend_tokenizer.enable_padding(direction="left", pad_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(tmp_path)  # what a run's model/ held after generating samples
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.backend_tokenizer.padding is None
    short, long = reloaded(["静夜思", "床前明月光，疑是地上霜。"])["input_ids"]
    assert len(short) < len(long)


# ---------------------------------------------------------------------------------------------
# The end of a run: one evaluation, and a speed that is training's alone


def test_a_run_evaluates_once_at_its_last_step(poems_file: Path, tmp_path: Path):
    """eval_steps=2 of 3 steps: Trainer evaluates at step 2 and, by itself, at the last step; train() takes
    that last evaluation (and the eval callback's scores beside it) instead of evaluating again."""
    scored = [
        "generation.eval_titles=['静夜思']",
        "generation.num_eval_poems=1",
        "generation.eval_max_new_tokens=8",
    ]
    run_dir = tmp_path / "run"
    metrics = train(
        run_config(tiny_overrides("lora", poems_file, steps=3) + ["train.eval_steps=2", *scored]), run_dir
    )
    history = json.loads((run_dir / artifacts.LOG_HISTORY_FILE).read_text(encoding="utf-8"))
    assert [h["step"] for h in history if "eval_loss" in h] == [2, 3]
    last = next(h for h in history if h["step"] == 3 and "eval_loss" in h)
    assert metrics["eval_loss"] == last["eval_loss"]
    poetry = {k: v for h in history if h["step"] == 3 for k, v in h.items() if k.startswith("eval_poetry/")}
    assert poetry and {k: metrics[k] for k in poetry} == poetry
    assert [json.loads(line)["step"] for line in (run_dir / "eval_poems.jsonl").read_text().splitlines()] == [
        2,
        3,
    ]


def test_tokens_per_s_counts_training_time_only(
    poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Evaluations and checkpoint saves made 1.5 s slower each: train_runtime_s leaves them out (they are
    reported as eval_runtime_s and checkpoint_save_s) and tokens/s is computed on it."""
    from trl import SFTTrainer

    delay, calls, wall = 1.5, Counter(), {}
    evaluate, save, train_loop = SFTTrainer.evaluate, SFTTrainer._save_checkpoint, SFTTrainer.train

    def slow_evaluate(self, *args, **kwargs):
        calls["evaluate"] += 1
        time.sleep(delay)
        return evaluate(self, *args, **kwargs)

    def slow_save(self, *args, **kwargs):
        calls["save"] += 1
        time.sleep(delay)
        return save(self, *args, **kwargs)

    def timed_train(self, *args, **kwargs):
        started = time.perf_counter()
        result = train_loop(self, *args, **kwargs)
        wall["train"] = time.perf_counter() - started
        return result

    monkeypatch.setattr(SFTTrainer, "evaluate", slow_evaluate)
    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", slow_save)
    monkeypatch.setattr(SFTTrainer, "train", timed_train)
    overrides = tiny_overrides("lora", poems_file, steps=4) + ["train.eval_steps=2", "train.save_steps=2"]
    metrics = train(run_config(overrides), tmp_path / "run")

    assert calls == {"evaluate": 2, "save": 2}, "steps 2 and 4, and no second evaluation at the end"
    assert metrics["eval_runtime_s"] >= 2 * delay and metrics["checkpoint_save_s"] >= 2 * delay
    assert 0 < metrics["train_runtime_s"] <= wall["train"] - 4 * delay + 0.01
    assert metrics["train_cpu_s"] > 0  # the same span in CPU seconds (a sleep takes none)
    # the speed is the tokens over that time (train_runtime_s is rounded to 10 ms; a tiny run takes ~0.1 s)
    seconds, tokens = metrics["train_runtime_s"], metrics["trained_tokens"]
    assert tokens / (seconds + 0.005) <= metrics["tokens_per_s"] <= tokens / (seconds - 0.005)
