"""Generation, merging, the eval callback and the report, on tiny CPU runs (no downloads)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import POEMS, run_config, tiny_overrides

from poetry_sft import poetry
from poetry_sft.config.schema import SamplingConfig
from poetry_sft.data.prompts import generation_prompt
from poetry_sft.errors import ConfigError, RunDirError
from poetry_sft.evaluate import generate, report, score
from poetry_sft.evaluate.generate import THINK_TOKENS, generate_poems, load_run
from poetry_sft.model.loading import resolve_model_path
from poetry_sft.poetry.critic import WEIGHT_NAMES
from poetry_sft.ship import merge
from poetry_sft.train.callbacks import EVAL_POEMS_FILE
from poetry_sft.train.sft import build_trainer, train

TITLES = ["静夜思", "春晓"]
GREEDY = SamplingConfig(do_sample=False, max_new_tokens=24, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def poems_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "poems.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in POEMS * 8), encoding="utf-8")
    return path


def _train(method: str, poems_path: Path, run_dir: Path, extra: list[str]) -> Path:
    # A large step, so that a few steps move the tiny model's output away from the base's.
    rate = "method.learning_rate=3e-2" if method != "full" else "method.learning_rate=3e-3"
    overrides = [*tiny_overrides(method, poems_path, steps=6), rate, "train.warmup_ratio=0", *extra]
    overrides.append("generation.max_new_tokens=40")  # enough for a 七言绝句; CPU time is short in tests
    train(run_config(overrides), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def lora_run(poems_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRA run whose config asks for eval poems and the report at the end of training."""
    titles = "generation.eval_titles=['静夜思','春晓']"
    extra = [titles, "generation.num_eval_poems=2", "generation.report=true"]
    return _train("lora", poems_path, tmp_path_factory.mktemp("runs") / "lora", extra)


@pytest.fixture(scope="module")
def full_run(poems_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train("full", poems_path, tmp_path_factory.mktemp("runs") / "full", [])


def run_generate(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / f"poems{len(list(tmp_path.glob('*.jsonl')))}.jsonl"
    assert generate.main([*args, "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def contents(records: list[dict]) -> list[str]:
    return [record["content"] for record in records]


# ---------------------------------------------------------------------------------------------
# The generate command


@pytest.mark.parametrize("run", ["lora_run", "full_run"])
def test_generate_command_writes_records_that_score_reads(
    run: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run_dir: Path = request.getfixturevalue(run)
    titles_file = tmp_path / "titles.txt"
    titles_file.write_text("# themes\n静夜思\n\n春晓\n", encoding="utf-8")
    records = run_generate(tmp_path, str(run_dir), "--titles-file", str(titles_file), "--per-title", "2")
    assert [r["title"] for r in records] == ["静夜思", "静夜思", "春晓", "春晓"]
    fields = {"title", "content", "form", "stopped_at_eos", "rhyme_group", "score", "parts", "candidates"}
    assert all(set(r) == fields and r["candidates"] is None for r in records)  # best-of-1: no candidates
    assert all(-2 < r["score"] <= 1 and set(r["parts"]) == set(WEIGHT_NAMES) for r in records)
    assert all(isinstance(r["stopped_at_eos"], bool) and r["form"] is None for r in records)
    assert "《静夜思》" in capsys.readouterr().out
    out = sorted(tmp_path.glob("poems*.jsonl"))[0]
    assert score.main([str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["n_poems"] == 4


def test_base_only_generation_is_the_base_model(lora_run: Path, tmp_path: Path):
    greedy = ["--title", "静夜思", "--title", "春晓", "--greedy", "--max-new-tokens", "24"]
    tuned = run_generate(tmp_path, str(lora_run), *greedy)
    base = run_generate(tmp_path, str(lora_run), "--base", *greedy)
    base_path = resolve_model_path(load_run(lora_run)[2].model)
    without_run = run_generate(tmp_path, "--model", base_path, *greedy)
    assert contents(base) == contents(without_run), "--base is the run's base model"
    assert contents(base) != contents(tuned), "and not what the run trained"


def test_generation_settings_come_from_the_config_and_flags_override(lora_run: Path, tmp_path: Path):
    greedy = ["--title", "静夜思", "--greedy", "--repetition-penalty", "1.0"]
    short = run_generate(tmp_path, str(lora_run), *greedy, "--max-new-tokens", "5")
    model, tokenizer, cfg = load_run(lora_run)
    assert cfg.generation.max_new_tokens == 40 and cfg.generation.num_eval_poems == 2
    model.train()
    [poem] = generate_poems(model, tokenizer, ["静夜思"], cfg.data, GREEDY, max_new_tokens=5)
    assert contents(short) == [poem.content]
    assert model.training, "the caller's train mode is restored (the eval callback generates mid-training)"
    # Qwen3-0.6B ships a generation_config.json that samples
    model.generation_config.do_sample, model.generation_config.temperature = True, 5.0
    first, second = (
        generate_poems(model, tokenizer, ["静夜思"], cfg.data, dataclasses.replace(GREEDY, seed=seed))
        for seed in (1, 2)
    )
    assert first == second, "greedy stays greedy whatever the model's generation_config.json says"


def test_constrained_generation_from_the_command_writes_the_form(lora_run: Path, tmp_path: Path):
    records = run_generate(
        tmp_path, str(lora_run), "--title", "静夜思", "--title", "春晓", "--form", "七言绝句", "--rhyme"
    )
    for record in records:
        assert poetry.classify_form(record["content"]) == "七言绝句", record
        assert poetry.rhymes(record["content"]) and record["stopped_at_eos"] and record["form"] == "七言绝句"


def test_the_rhyme_group_and_layout_of_constrained_poems_are_settings(lora_run: Path, tmp_path: Path):
    args = ["--form", "五言绝句", "--rhyme-group", "七阳", "--no-couplet-newline", "--per-title", "2"]
    records = run_generate(tmp_path, str(lora_run), "--title", "登高", *args)
    group = poetry.find_rhyme_group("七阳")
    for record in records:
        lines = poetry.split_lines(record["content"])
        assert poetry.classify_form(record["content"]) == "五言绝句" and "\n" not in record["content"], record
        assert all(group in poetry.rhyme_groups(line[-1]) for line in lines[1::2]), record


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--form", "七言律诗", "--max-new-tokens", "20"], "at least 68"),
        (["--temperature", "0"], "--temperature 0.0 must be > 0 when sampling (or --greedy)"),
        (["--max-new-tokens", "100000000"], "--max-new-tokens 100000000 is far longer than any poem"),
        (["--top-p", "2"], "--top-p 2.0 must be in (0, 1]"),
        (["--titles-file", "missing.txt"], "file not found: missing.txt"),
    ],
)
def test_bad_generate_requests_name_the_fix(
    lora_run: Path, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
):
    assert generate.main([str(lora_run), "--title", "静夜思", *args]) == 2
    assert expected in capsys.readouterr().err


def test_existing_output_is_never_overwritten(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "mine.jsonl"
    out.write_text("keep\n", encoding="utf-8")
    assert generate.main([str(lora_run), "--title", "静夜思", "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err and out.read_text(encoding="utf-8") == "keep\n"


# ---------------------------------------------------------------------------------------------
# <think> and the end token, with the logits pushed towards the token under test


def _push(model: torch.nn.Module, token_id: int):
    """Make `token_id` the model's overwhelming choice at every step (a hook on the output layer)."""
    return model.get_output_embeddings().register_forward_hook(
        lambda module, inputs, logits: logits.index_add(
            -1, torch.tensor([token_id]), torch.full((*logits.shape[:-1], 1), 1e4)
        )
    )


def test_think_tokens_are_never_generated(full_run: Path):
    model, tokenizer, cfg = load_run(full_run)
    think = tokenizer.convert_tokens_to_ids(THINK_TOKENS[0])
    handle = _push(model, think)
    try:
        prompt = tokenizer(["静夜思"], return_tensors="pt", add_special_tokens=False)
        unsuppressed = model.generate(**prompt, max_new_tokens=3, do_sample=False)
        assert unsuppressed[0, -1].item() == think, "the hook works: unsuppressed, <think> is chosen"
        [poem] = generate_poems(model, tokenizer, ["静夜思"], cfg.data, GREEDY)
    finally:
        handle.remove()
    assert "<think>" not in poem.content and "</think>" not in poem.content


def test_generation_stops_at_the_end_token_and_says_so(full_run: Path):
    model, tokenizer, cfg = load_run(full_run)
    handle = _push(model, tokenizer.eos_token_id)
    try:
        [stopped] = generate_poems(model, tokenizer, ["静夜思"], cfg.data, GREEDY)
    finally:
        handle.remove()
    handle = _push(model, tokenizer.convert_tokens_to_ids("月"))
    try:
        [running] = generate_poems(model, tokenizer, ["静夜思"], cfg.data, GREEDY)
    finally:
        handle.remove()
    assert stopped.stopped_at_eos and stopped.content == ""
    assert not running.stopped_at_eos and running.content == "月" * GREEDY.max_new_tokens


def test_each_prompt_style_generates_from_what_it_was_trained_on(full_run: Path):
    from poetry_sft.config.schema import PromptStyle

    model, tokenizer, cfg = load_run(full_run)
    style = lambda name: dataclasses.replace(cfg.data, prompt_style=PromptStyle(name))  # noqa: E731
    # first_line: the subject is the first line, and the poem written is that line plus the rest.
    [poem] = generate_poems(model, tokenizer, ["白日依山尽，"], style("first_line"), GREEDY)
    assert poem.content.startswith("白日依山尽，") and len(poem.content) > len("白日依山尽，")
    with pytest.raises(ConfigError, match="first_line"):
        generate_poems(
            model,
            tokenizer,
            ["白日依山尽，"],
            style("first_line"),
            dataclasses.replace(GREEDY, form="五言绝句"),
        )
    # form_theme names a form: without one the request is refused, naming --form.
    with pytest.raises(ConfigError, match="--form"):
        generate_poems(model, tokenizer, ["春"], style("form_theme"), GREEDY)
    [poem] = generate_poems(
        model,
        tokenizer,
        ["春"],
        style("form_theme"),
        dataclasses.replace(GREEDY, form="五言绝句", max_new_tokens=30),
    )
    assert poetry.classify_form(poem.content) == "五言绝句"  # constrained by the same form
    # keywords: the model is asked with exactly the training prompt of that style.
    asked: list[str] = []

    def record(*args, **kwargs) -> str:
        asked.append(generation_prompt(*args, **kwargs))
        return asked[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate, "generation_prompt", record)
        [poem] = generate_poems(model, tokenizer, ["明月、孤舟"], style("keywords"), GREEDY)
    assert asked == [generation_prompt(tokenizer, style("keywords"), "明月、孤舟")]
    assert "以「明月、孤舟」为意象" in asked[0]
    assert poem.title == "明月、孤舟" and "<|im_start|>" not in poem.content


# ---------------------------------------------------------------------------------------------
# Merge


def test_merged_model_loads_with_plain_transformers_and_matches_the_adapter(lora_run: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    out = merge.merge_run(lora_run, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists() and (out / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapter_model, tokenizer, cfg = load_run(lora_run)
    titles = ["静夜思", "春晓", "登鹳雀楼"]
    with_adapter = generate_poems(adapter_model, tokenizer, titles, cfg.data, GREEDY)
    with_merged = generate_poems(merged, tokenizer, titles, cfg.data, GREEDY)
    assert [p.content for p in with_merged] == [p.content for p in with_adapter]
    with adapter_model.disable_adapter():
        base = generate_poems(adapter_model, tokenizer, titles, cfg.data, GREEDY)
    assert [p.content for p in base] != [p.content for p in with_adapter], "the merge carries the adapter"


@pytest.fixture(scope="module")
def qlora_run(poems_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train("qlora", poems_path, tmp_path_factory.mktemp("runs") / "qlora", [])


def test_qlora_run_generates_on_the_4bit_base_it_trained_on(qlora_run: Path):
    import bitsandbytes as bnb

    def four_bit_layers(model: torch.nn.Module) -> int:
        return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())

    trained, tokenizer, cfg = load_run(qlora_run)
    assert four_bit_layers(trained) > 0, "the trained model: adapter on the NF4 base"
    assert four_bit_layers(load_run(qlora_run, base=True)[0]) > 0, "--base: the 4-bit base too"
    dequantized, _, _ = load_run(qlora_run, dequantized_base=True)
    assert four_bit_layers(dequantized) == 0
    # the trained model's own outputs, as training and its eval callback saw them
    ids = tokenizer(generation_prompt(tokenizer, cfg.data, "静夜思"), return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.equal(trained(input_ids=ids).logits, dequantized(input_ids=ids).logits)


def test_merge_prints_how_far_the_merged_model_is_from_the_trained_one(
    qlora_run: Path, lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
):
    def no_poems(*args, **kwargs):
        raise AssertionError("the default check compares logits; it writes no poems")

    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_poems", no_poems)
        assert merge.main([str(qlora_run), "--out", str(tmp_path / "q")]) == 0
    printed = capsys.readouterr().out
    check = json.loads((tmp_path / "q" / merge.CHECK_FILE).read_text(encoding="utf-8"))
    assert check["prompts"] == 6 and check["positions"] > 6 * 30, "each prompt with its poem"
    assert (
        f"the same next token at {check['next_token_agreement']:.2%}" in printed and "4-bit base" in printed
    )
    assert check["max_abs_logit_diff"] > 0  # the unquantised base is not the one the adapter learned on
    assert check["greedy_poems"] == 0 and check["greedy_poems_agreeing"] is None
    assert set(check["seconds"]) == {"load_and_merge", "load_trained", "logit_check", "save"}
    assert "took: load and merge" in printed

    assert merge.main([str(lora_run), "--out", str(tmp_path / "l"), "--poems", "2"]) == 0
    check = json.loads((tmp_path / "l" / merge.CHECK_FILE).read_text(encoding="utf-8"))
    assert "2/2 greedy poems identical" in capsys.readouterr().out and "poem_check" in check["seconds"]
    trained, tokenizer, cfg = load_run(lora_run)
    lora = merge.compare_models(trained, load_run(lora_run)[0].merge_and_unload(), tokenizer, cfg, poems=6)
    assert lora["greedy_poems_agreeing"] == 6 and lora["max_abs_logit_diff"] < 1e-3  # LoRA: same model
    assert lora["next_token_agreement"] == 1.0


def test_merge_refuses_to_overwrite_and_explains_full_runs(lora_run: Path, full_run: Path, tmp_path: Path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "weights.bin").write_bytes(b"mine")
    with pytest.raises(RunDirError, match="never overwritten"):
        merge.merge_run(lora_run, occupied)
    assert (occupied / "weights.bin").read_bytes() == b"mine"
    with pytest.raises(RunDirError, match="already is a standalone model"):
        merge.merge_run(full_run, tmp_path / "merged")


# ---------------------------------------------------------------------------------------------
# The eval callback


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_callback_logs_poetry_scores_beside_eval_loss(method: str, poems_path: Path, tmp_path: Path):
    overrides = tiny_overrides(method, poems_path, steps=4) + [
        "train.eval_steps=2",
        "generation.eval_titles=['静夜思','春晓']",
        "generation.num_eval_poems=3",
        "generation.eval_max_new_tokens=12",
        "generation.form='五言绝句'",
    ]
    trainer = build_trainer(run_config(overrides), tmp_path)
    trainer.train()
    history = trainer.state.log_history
    eval_steps = [entry["step"] for entry in history if "eval_loss" in entry]
    scored = {entry["step"]: entry for entry in history if "eval_poetry/rhyme_rate" in entry}
    assert eval_steps == [2, 4] and sorted(scored) == eval_steps
    for entry in scored.values():
        assert entry["eval_poetry/n_poems"] == 3
        assert {"format_accuracy", "regulated_form_rate", "distinct_1", "eos_termination_rate"} <= {
            key.removeprefix("eval_poetry/") for key in entry
        }
    written = [json.loads(line) for line in (tmp_path / EVAL_POEMS_FILE).read_text("utf-8").splitlines()]
    titles = [*TITLES, TITLES[0]]  # num_eval_poems=3 cycles through the two titles
    assert [(r["step"], r["title"]) for r in written] == [(step, t) for step in (2, 4) for t in titles]
    assert "eval_poetry/rhyme_rate" in trainer.evaluate(), "evaluate() returns the scores too"


def test_no_callback_unless_eval_titles_are_configured(poems_path: Path, tmp_path: Path):
    from poetry_sft.train.callbacks import PoetryEvalCallback

    trainer = build_trainer(run_config(tiny_overrides("lora", poems_path, steps=1)), tmp_path)
    assert not any(isinstance(cb, PoetryEvalCallback) for cb in trainer.callback_handler.callbacks)


# ---------------------------------------------------------------------------------------------
# The report


def test_training_writes_the_report_and_final_scores_when_configured(lora_run: Path):
    finished = json.loads((lora_run / "metrics.json").read_text(encoding="utf-8"))
    assert finished["eval_poetry/n_poems"] == 2
    written = json.loads((lora_run / report.REPORT_JSON).read_text(encoding="utf-8"))
    assert written["titles"] == TITLES and written["method"] == "lora"
    assert set(written["scores"]) == {"base", "finetuned"}
    for scores in written["scores"].values():
        assert scores["n_poems"] == 2 and set(poetry.score_poems(["春眠不觉晓"])) == set(scores)
    assert [p["title"] for p in written["poems"]] == TITLES
    assert written["poems"][0]["base"]["content"] != written["poems"][0]["finetuned"]["content"]
    markdown = (lora_run / report.REPORT_MD).read_text(encoding="utf-8")
    assert "| metric | base | fine-tuned |" in markdown and "| rhyme_rate |" in markdown
    assert f"| 静夜思 | {written['poems'][0]['base']['content'][:5]}" in markdown


def test_report_command_on_a_full_run_and_no_overwrite(full_run: Path, capsys: pytest.CaptureFixture[str]):
    args = [str(full_run), "--title", "春晓", "--title", "相思", "--per-title", "2"]
    assert report.main(args) == 0
    written = json.loads((full_run / report.REPORT_JSON).read_text(encoding="utf-8"))
    assert written["scores"]["base"]["n_poems"] == written["scores"]["finetuned"]["n_poems"] == 4
    assert written["poems"][0]["base"]["content"] != written["poems"][0]["finetuned"]["content"]
    before = (full_run / report.REPORT_JSON).read_bytes()
    assert report.main(args) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (full_run / report.REPORT_JSON).read_bytes() == before


def test_sampling_config_is_validated():
    with pytest.raises(ConfigError, match="generation.form='八言' is not one of"):
        run_config(["generation.form='八言'"])
    with pytest.raises(ConfigError, match="generation.rhyme=true needs generation.form"):
        run_config(["generation.rhyme=true"])


def test_generate_flags_come_from_the_sampling_settings():
    args = generate._parser().parse_args(["x", "--title", "t", "--no-penalize-punctuation", "--top-k", "7"])
    sampling = generate._sampling(SamplingConfig(), args, rhyme_hint=False)
    assert sampling.penalize_punctuation is False and sampling.top_k == 7 and sampling.temperature == 0.8
    flagged = {action.dest for action in generate._parser()._actions}
    assert {"rhyme_group", "couplet_newline", "seed"} <= flagged, "settings added since get their flags"


# ---------------------------------------------------------------------------------------------
# Best-of-N and rhyme-aware prompts


def test_best_of_n_samples_every_candidate_in_one_generate_call_and_keeps_the_critics_pick(
    full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    model, tokenizer, cfg = load_run(full_run)
    calls: list[int] = []
    real = type(model).generate

    def counting(self, *args, **kwargs):
        calls.append(kwargs["generation_config"].num_return_sequences)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", counting)
    poems = generate_poems(model, tokenizer, TITLES, cfg.data, cfg.generation, best_of=8)
    assert calls == [8]  # both titles, eight poems each: one batch, not sixteen calls
    for poem in poems:
        assert poem.candidates and len(poem.candidates) == 8
        scores = [candidate["score"] for candidate in poem.candidates]
        assert scores == sorted(scores, reverse=True) and poem.score == scores[0]
        assert poem.content == poem.candidates[0]["content"] and set(poem.parts) == set(WEIGHT_NAMES)
    monkeypatch.undo()
    records = run_generate(tmp_path, str(full_run), "--title", "静夜思", "--best-of", "3")
    assert len(records[0]["candidates"]) == 3  # the command records every candidate with its score
    scored = json.loads(json.dumps(score.score_file(sorted(tmp_path.glob("poems*.jsonl"))[0])))
    assert scored["critic_score"] == pytest.approx(records[0]["score"], abs=1e-4)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--best-of", "0"], "--best-of 0 must be at least 1"),
        (["--best-of", "4", "--greedy"], "needs sampling"),
        (["--rhyme-group", "七阳"], "--rhyme-group needs --form"),  # a plain run has no hint to fill
        (["--form", "五言绝句", "--rhyme-group", "七羊"], "no group matches"),
    ],
)
def test_bad_best_of_and_rhyme_requests_are_refused_before_the_model_loads(
    full_run: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch
):
    monkeypatch.setattr(generate, "load_run", lambda *a, **k: pytest.fail("loaded the model"))
    assert generate.main([str(full_run), "--title", "登高", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def hinted_run(poems_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained with rhyme-aware prompts (data.rhyme_hint)."""
    return _train("full", poems_path, tmp_path_factory.mktemp("runs") / "hinted", ["data.rhyme_hint=true"])


def test_rhyme_aware_prompts_train_and_generate_with_the_same_hint(
    hinted_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from poetry_sft.data.prompts import make_formatting_func, user_and_completion
    from poetry_sft.poetry.rhyme_hint import common_rhyme_chars

    model, tokenizer, cfg = load_run(hinted_run)
    # training: the poem's own group and rhyme characters, among others of the group
    row = {"title": "静夜思", "content": POEMS[0]["content"]}
    user, _ = user_and_completion("以《{title}》为题，写一首古诗。", cfg.data.prompt_style, row, hint_count=5)
    assert user.startswith("以《静夜思》为题，写一首古诗。押七阳韵，韵脚可用：")
    listed = user.split("韵脚可用：")[1].rstrip("。").split("、")
    assert {"霜", "乡", "光"} <= set(listed) and len(listed) == 5  # 光 rhymes too: 首句入韵
    assert make_formatting_func(cfg.data)(row)["prompt"][-1]["content"] == user
    no_rhyme = {"title": "春晓", "content": POEMS[2]["content"]}  # 晓/鸟/少: an oblique rhyme, no hint
    assert (
        "押"
        not in user_and_completion("以《{title}》为题。", cfg.data.prompt_style, no_rhyme, hint_count=5)[0]
    )
    # generation: the asked group and its commonest characters, recorded with the poem and scored
    prompt = generation_prompt(tokenizer, cfg.data, "登高", rhyme_group="七阳")
    hint = prompt.split("韵脚可用：")[1].split("。")[0].split("、")
    assert "押七阳韵" in prompt and set(hint) <= set(common_rhyme_chars("下平聲七陽")[:15]) and len(hint) == 5
    records = run_generate(tmp_path, str(hinted_run), "--title", "登高", "--rhyme-group", "阳")
    assert records[0]["rhyme_group"] == "下平聲七陽"
    default = run_generate(tmp_path, str(hinted_run), "--title", "登高", "--title", "江雪")
    assert all(r["rhyme_group"] for r in default)  # a group picked per title when none is asked for
    assert (
        json.loads(json.dumps(score.score_file(sorted(tmp_path.glob("poems*.jsonl"))[-1])))[
            "asked_rhyme_rate"
        ]
        is not None
    )
    assert generate.main([str(hinted_run), "--title", "登高", "--rhyme-group", "一董"]) == 2
    assert "oblique-tone (仄) group" in capsys.readouterr().err  # a hint asks for the level rhymes
