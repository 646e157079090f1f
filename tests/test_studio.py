"""The studio's page logic, without a browser: marks on known poems, runs, confinement, bad input."""

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from conftest import run_config, tiny_overrides

from poetry_sft import atomic, poetry
from poetry_sft.run import artifacts
from poetry_sft.studio import logic
from poetry_sft.studio.logic import Studio, StudioError, analyse_poem, poem_html

JUE_JU = "两个黄鹂鸣翠柳，一行白鹭上青天。\n窗含西岭千秋雪，门泊东吴万里船。"  # 杜甫《绝句》
# 登鹳雀楼 broken on purpose: 一河 (孤平 in line 2), 欲去 (失粘 3, so 失对 4), 高层天 (三平尾, 出韵 4)
BROKEN = "白日依山尽，一河入海流。\n欲去千里目，更上高层天。"
HUANG_HE_LOU = (
    "昔人已乘黄鹤去，此地空余黄鹤楼。\n黄鹤一去不复返，白云千载空悠悠。\n"
    "晴川历历汉阳树，芳草萋萋鹦鹉洲。\n日暮乡关何处是，烟波江上使人愁。"
)


def flags(poem: str) -> set[tuple[int, str]]:
    return {(flag.line, flag.kind) for flag in analyse_poem(poem).flags}


def test_a_regulated_quatrain_is_marked_and_breaks_nothing():
    analysis = analyse_poem(JUE_JU, "七言绝句")
    assert analysis.form == "七言绝句" and analysis.variant == "仄起首句不入韵"
    assert analysis.flags == []
    assert analysis.rhyme_group == "下平声一先"
    rhymed = [mark.char for line in analysis.lines for mark in line if mark.rhyme]
    assert rhymed == ["天", "船"]  # line 1 (柳) does not rhyme
    tones = {mark.char: mark.tone for line in analysis.lines for mark in line}
    assert (tones["黄"], tones["翠"], tones["一"], tones["行"]) == ("平", "仄", "仄", "平仄")
    assert not any(mark.breaks for line in analysis.lines for mark in line)
    assert analysis.scores["format_accuracy"] == 1.0 and analysis.scores["tone_pass_rate"] == 1.0
    page = poem_html("绝句", JUE_JU, analysis)
    assert page.count("<ruby") == 28 and "sf-rhyme" in page and "sf-break" not in page
    assert "下平声一先" in page and "无破格" in page


def test_a_broken_quatrain_has_each_break_flagged_on_its_line():
    assert flags(BROKEN) == {
        (2, "gu_ping"),
        (3, "shi_nian"),
        (4, "shi_dui"),
        (4, "san_ping_wei"),
        (4, "off_rhyme"),
    }
    analysis = analyse_poem(BROKEN)
    assert analysis.rhyme_group == "下平声十一尤"  # the first even line sets it; 天 (一先) is off
    broken = [mark.char for line in analysis.lines for mark in line if mark.breaks]
    assert broken == ["去"]  # 仄 where the pattern wants 平 (line 3, 2nd character)
    page = poem_html("登鹳雀楼", BROKEN, analysis)
    for text in ("孤平", "失粘", "失对", "三平尾", "出韵"):
        assert text in page
    assert page.count("sf-break") == 1


def test_huang_he_lou_breaks_sticking_and_opposition_where_it_is_known_to():
    shi_nian, shi_dui = poetry.sticking_and_opposition(HUANG_HE_LOU)
    assert (shi_nian, shi_dui) == ((3,), (2, 4))
    assert poetry.sticking_and_opposition("床前明月光，疑是地上霜。") == ((), ())  # not regulated
    required = poetry.required_tones(JUE_JU)
    assert required is not None and required[0] == ["", "仄", "", "平", "", "仄", "仄"]


def test_an_unregulated_text_is_marked_without_pattern_or_flags():
    analysis = analyse_poem("春风吹。明月照高楼，abc")
    assert analysis.form == "other" and analysis.variant is None and analysis.flags == []
    assert [m.tone for m in analysis.lines[0]] == ["平", "平", "平仄"]  # 吹 is read both ways
    assert [m.tone for m in analysis.lines[2]] == ["", "", ""]  # not characters of verse
    assert "非格律" in poem_html("x", "春风吹。", analysis)


# ---------------------------------------------------------------------------------------------
# Runs and confinement


def _fake_run(root: Path, name: str, poems: Path, finished: bool = True, training: bool = False) -> Path:
    run_dir = root / name
    artifacts.save_run_config(run_config(tiny_overrides("lora", poems)), run_dir)
    if training:
        (run_dir / artifacts.CHECKPOINTS_DIR).mkdir()
    if finished:
        (run_dir / artifacts.MODEL_DIR).mkdir()
        atomic.write_json(run_dir / artifacts.METRICS_FILE, {"eval_loss": 1.25, "global_step": 3})
    return run_dir


def test_runs_are_listed_with_their_settings_and_only_from_the_runs_folder(tmp_path: Path, poems_file: Path):
    root = tmp_path / "runs"
    _fake_run(root, "a_lora", poems_file)
    _fake_run(root, "b_training", poems_file, finished=False, training=True)
    (root / "foreign" / "stuff").mkdir(parents=True)
    job = _fake_run(root / "sweep", "0", poems_file)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text("- method.r=4\n")
    listed = {run.name: run for run in logic.list_runs(root)}
    assert set(listed) == {"a_lora", "b_training", "sweep", "sweep/0"}
    run = listed["a_lora"]
    assert (run.kind, run.status, run.model, run.method, run.hardware, run.eval_loss) == (
        "run",
        "finished",
        "tiny",
        "lora",
        "8gb",
        1.25,
    )
    assert run.date and "eval_loss 1.250" in run.label
    assert listed["b_training"].status == "training" and listed["sweep"].kind == "sweep"

    studio = Studio(root)
    with pytest.raises(StudioError, match="still training"):
        logic.open_run(root, "b_training")
    with pytest.raises(StudioError, match="not a poetry_sft run"):
        logic.open_run(root, "foreign")
    with pytest.raises(StudioError, match="no longer exists"):
        logic.open_run(root, "gone")
    overview = studio.overview("sweep")
    assert overview.kind == "sweep" and "method.r=4" in overview.report_md and overview.metrics["jobs"] == 1


@pytest.mark.parametrize("name", ["../outside", "a/../../outside", "/etc/passwd", "", "  ", "a\0b"])
def test_no_name_from_the_page_reaches_outside_the_runs_folder(tmp_path: Path, name: str):
    root = tmp_path / "runs"
    root.mkdir()
    with pytest.raises(StudioError):
        logic.resolve_under(root, name)


def test_a_link_out_of_the_runs_folder_is_refused(tmp_path: Path):
    root = tmp_path / "runs"
    (tmp_path / "secret").mkdir()
    root.mkdir()
    os.symlink(tmp_path / "secret", root / "link")
    with pytest.raises(StudioError, match="outside the runs folder"):
        logic.resolve_under(root, "link")
    assert logic.resolve_under(root, "a/b") == (root / "a" / "b").resolve()


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("", "empty"),
        ("春" * 1000, "1000 characters"),
        ("春夜<|im_end|>", "control token"),
        ("a\nb", "one line"),
    ],
)
def test_unusable_subjects_are_refused_with_the_reason(subject: str, message: str):
    with pytest.raises(StudioError, match=message):
        logic.check_subject(subject, logic.PromptStyle.title)


def test_a_form_the_prompt_style_cannot_take_is_refused(poems_file: Path):
    first_line = run_config([*tiny_overrides("lora", poems_file), "data.prompt_style=first_line"])
    with pytest.raises(StudioError, match="first line"):
        logic.sampling_settings(first_line, "七言绝句", False, 0.8, 0.9, 128, 0)
    form_theme = run_config([*tiny_overrides("lora", poems_file), "data.prompt_style=form_theme"])
    with pytest.raises(StudioError, match="name the form"):
        logic.sampling_settings(form_theme, None, False, 0.8, 0.9, 128, 0)
    title = run_config(tiny_overrides("lora", poems_file))
    with pytest.raises(StudioError, match="rhyme needs a form"):
        logic.sampling_settings(title, None, True, 0.8, 0.9, 128, 0)
    assert logic.sampling_settings(title, "五言绝句", True, 0, 0.9, 64, 3).do_sample is False


def test_the_cache_keeps_the_newest_and_frees_the_oldest():
    cache = logic.ModelCache(capacity=1)
    made = []
    for key in ["a", "a", "b", "a"]:
        cache.get(key, lambda key=key: made.append(key) or key)
    assert made == ["a", "b", "a"] and cache.keys() == ["a"]


# ---------------------------------------------------------------------------------------------
# On a trained demo run


def test_poems_are_written_in_the_form_asked_for_with_the_model_loaded_once(demo_runs: Path):
    studio = Studio(demo_runs)
    batches = list(
        studio.write("demo", "春夜喜雨", form="七言绝句", rhyme=True, n_poems=2, compare_base=True)
    )
    assert [len(b.poems) for b in batches] == [1, 2, 3, 4]  # streamed: one more poem each time
    final = batches[-1]
    assert [p.model for p in final.poems] == ["fine-tuned", "base", "fine-tuned", "base"]
    for poem in final.poems:
        assert poetry.classify_form(poem.content) == "七言绝句" and poetry.rhymes(poem.content)
        assert poem.analysis.rhyme_group and len(poem.analysis.lines) == 4
        assert poem.html.count("<ruby") == 28
    assert final.of("fine-tuned")[0].content != final.of("fine-tuned")[1].content  # seeds 0 and 1
    list(studio.write("demo", "登高", form="五言绝句"))
    base = list(studio.write("demo", "登高", form="五言绝句", base_only=True))[-1].poems
    assert [p.model for p in base] == ["base"]
    assert studio.loads == 2  # the fine-tuned model and the base, each once


def test_best_of_n_keeps_the_critics_pick_and_shows_every_candidate_with_its_score(demo_runs: Path):
    studio = Studio(demo_runs)
    poem = list(studio.write("demo", "春夜喜雨", best_of=4))[-1].poems[0]
    assert poem.candidates and len(poem.candidates) == 4
    scores = [c["score"] for c in poem.candidates]
    assert scores == sorted(scores, reverse=True) and poem.score == scores[0]
    assert poem.content == poem.candidates[0]["content"]
    assert "择优 best of 4" in poem.html and poem.html.count("<li><b>") == 4
    plain = list(studio.write("demo", "春夜喜雨"))[-1].poems[0]
    assert plain.candidates is None and "critic score" in plain.html and "候选" not in plain.html
    for bad, message in ((0, "best of 0"), (17, "best of 17"), (4, "needs sampling")):
        temperature = 0 if message == "needs sampling" else 0.8
        with pytest.raises(StudioError, match=message):
            list(studio.write("demo", "春夜喜雨", best_of=bad, temperature=temperature))


def test_eight_concurrent_requests_each_get_their_own_poem(demo_runs: Path):
    studio = Studio(demo_runs)
    requests = [("春夜喜雨", 0), ("登高", 1), ("静夜思", 2), ("江雪", 3)] * 2

    def write(title: str, seed: int) -> tuple[str, str]:
        poem = list(studio.write("demo", title, form="五言绝句", seed=seed))[-1].poems[0]
        return poem.title, poem.content

    alone = {request: write(*request) for request in requests[:4]}
    results: dict[int, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = write(*requests[i])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert [results[i] for i in range(8)] == [alone[request] for request in requests]
    assert studio.loads == 1


def test_a_run_deleted_while_open_gives_a_message(demo_runs: Path, tmp_path: Path):
    root = tmp_path / "runs"
    shutil.copytree(demo_runs / "demo", root / "demo")
    studio = Studio(root)
    assert list(studio.write("demo", "春夜喜雨", form="五言绝句"))
    shutil.rmtree(root / "demo")
    with pytest.raises(StudioError, match="no longer exists"):
        list(studio.write("demo", "春夜喜雨", form="五言绝句"))


def test_the_data_preview_shows_masked_prompts_and_trained_poems(demo_runs: Path):
    preview = Studio(demo_runs).preview_data("demo", 2)
    report = json.loads((demo_runs / "demo" / artifacts.DATA_REPORT_FILE).read_text(encoding="utf-8"))
    assert preview.report == report and "rows in" in preview.dropped_table()
    assert len(preview.examples) == 2 and preview.histogram is not None
    for example in preview.examples:
        assert example.prompt_tokens > 0 and example.trained_tokens > 0
        trained = example.html.rsplit('<span class="sf-trained">', 1)[1]
        assert trained.startswith("&lt;|im_end|&gt;")  # the poem's end token is trained
        assert '<span class="sf-prompt">&lt;|im_start|&gt;</span>' in example.html


def test_the_runs_view_has_loss_curves_and_poetry_scores(demo_runs: Path):
    overview = Studio(demo_runs).overview("demo")
    assert overview.status == "finished" and overview.metrics["global_step"] == 10
    assert "samples" not in overview.metrics
    steps = [h["step"] for h in overview.history if "eval_loss" in h]
    assert steps == [5, 10]
    assert overview.loss_plot is not None and overview.poetry_plot is not None


def test_the_command_refuses_a_missing_runs_folder(tmp_path: Path, capsys: pytest.CaptureFixture):
    from poetry_sft.studio.command import main

    assert main(["--runs", str(tmp_path / "nope")]) == 2
    assert "--runs" in capsys.readouterr().err
