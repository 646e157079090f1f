"""Poetry metrics against poems whose form, rhyme and tones are known."""

import json
import random
from pathlib import Path

import pytest

from poetry_sft import poetry
from poetry_sft.evaluate import score
from poetry_sft.poetry.copying import CopyIndex

JING_YE_SI = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"  # 古绝: rhymes, not fully regulated
DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"
ZAO_FA_BAI_DI_CHENG = "朝辞白帝彩云间，千里江陵一日还。\n两岸猿声啼不住，轻舟已过万重山。"
CHUN_WANG = (
    "国破山河在，城春草木深。\n感时花溅泪，恨别鸟惊心。\n烽火连三月，家书抵万金。\n白头搔更短，浑欲不胜簪。"
)
DENG_GAO = (
    "风急天高猿啸哀，渚清沙白鸟飞回。\n无边落木萧萧下，不尽长江滚滚来。\n"
    "万里悲秋常作客，百年多病独登台。\n艰难苦恨繁霜鬓，潦倒新停浊酒杯。"
)
HUANG_HE_LOU = (  # a 七言律诗 famous for breaking the tone rules in its first half
    "昔人已乘黄鹤去，此地空余黄鹤楼。\n黄鹤一去不复返，白云千载空悠悠。\n"
    "晴川历历汉阳树，芳草萋萋鹦鹉洲。\n日暮乡关何处是，烟波江上使人愁。"
)
REGULATED = [DENG_GUAN_QUE_LOU, ZAO_FA_BAI_DI_CHENG, CHUN_WANG, DENG_GAO]


def shuffle_characters(poem: str, seed: int) -> str:
    """The same layout and characters, in a random order."""
    chars = [char for char in poem if poetry.is_han(char)]
    random.Random(seed).shuffle(chars)
    shuffled = iter(chars)
    return "".join(next(shuffled) if poetry.is_han(char) else char for char in poem)


@pytest.mark.parametrize(
    ("poem", "form"),
    [
        (JING_YE_SI, "五言绝句"),
        (DENG_GUAN_QUE_LOU, "五言绝句"),
        (ZAO_FA_BAI_DI_CHENG, "七言绝句"),
        (CHUN_WANG, "五言律诗"),
        (DENG_GAO, "七言律诗"),
        (HUANG_HE_LOU, "七言律诗"),
        ("白日依山尽，黄河入海流。\n欲穷千里目。", "other"),  # truncated
        ("白日依山尽，黄河入海流。\n欲穷千里目，更上一层高楼。", "other"),  # uneven lines
        ("白日依山尽，黄河入海流。\n欲穷千里目，更上一层ok。", "other"),  # not all Chinese
        ("", "other"),
    ],
)
def test_classify_form(poem: str, form: str) -> None:
    assert poetry.classify_form(poem) == form


def test_sentence_per_line_layout_splits_like_the_corpus_layout() -> None:
    one_ju_per_line = "白日依山尽\n黄河入海流\n欲穷千里目\n更上一层楼\n"
    half_width = "白日依山尽, 黄河入海流.\n“欲穷千里目”，更上一层楼！"
    assert poetry.split_lines(one_ju_per_line) == poetry.split_lines(DENG_GUAN_QUE_LOU)
    assert poetry.split_lines(half_width) == poetry.split_lines(DENG_GUAN_QUE_LOU)
    assert poetry.line_lengths(DENG_GAO) == [7] * 8


def test_format_accuracy() -> None:
    poems = [DENG_GUAN_QUE_LOU, ZAO_FA_BAI_DI_CHENG, "白日依山尽，黄河入海流。"]
    assert poetry.format_accuracy(poems, "五言绝句") == pytest.approx(1 / 3)
    assert poetry.format_accuracy(poems, ["五言绝句", "七言绝句", "五言绝句"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="choose one of 五言绝句, 七言绝句, 五言律诗, 七言律诗"):
        poetry.format_accuracy(poems, "绝句")
    with pytest.raises(ValueError, match="3 poems but 2 requested forms"):
        poetry.format_accuracy(poems, ["五言绝句", "七言绝句"])


def test_rhyme_groups_come_from_the_pingshui_table() -> None:
    assert len(poetry.rhyme_group_names()) == 106
    assert len(poetry.level_rhyme_groups()) == 30
    # Simplified and traditional forms find the same groups; 先 is restored to the group it names.
    assert poetry.rhyme_groups("乡") == poetry.rhyme_groups("鄉")
    assert "下平聲七陽" in poetry.rhyme_groups("乡")
    assert "下平聲一先" in poetry.rhyme_groups("先")
    assert poetry.rhyme_groups("a") == frozenset()


def test_polyphones_take_either_tone() -> None:
    assert poetry.char_tones("看") == {"平", "仄"}
    assert poetry.char_tones("高") == {"平"}
    assert poetry.char_tones("一") == {"仄"}
    assert poetry.char_tones("?") == frozenset()


@pytest.mark.parametrize("poem", [JING_YE_SI, *REGULATED, HUANG_HE_LOU])
def test_classics_rhyme(poem: str) -> None:
    assert poetry.rhymes(poem)


def test_broken_poems_do_not_rhyme() -> None:
    assert not poetry.rhymes("白日依山尽，黄河入海流。\n欲穷千里目。")  # one even line left
    assert not poetry.rhymes("白日依山尽，黄河入海流。\n欲穷千里目，更上一层台。")  # 流/台
    assert poetry.rhyme_rate([JING_YE_SI, "白日依山尽，黄河入海流。\n欲穷千里目，更上一层台。"]) == 0.5


@pytest.mark.parametrize(
    ("poem", "variant"),
    [
        (DENG_GUAN_QUE_LOU, "仄起首句不入韵"),
        (ZAO_FA_BAI_DI_CHENG, "平起首句不入韵"),
        (CHUN_WANG, "仄起首句不入韵"),
        (DENG_GAO, "仄起首句入韵"),
    ],
)
def test_regulated_classics_pass_the_tone_rules(poem: str, variant: str) -> None:
    report = poetry.check_tones(poem)
    assert report is not None
    assert report.variant == variant
    assert report.compliance == 1.0
    assert report.passed


def test_irregular_classics_are_scored_below_full_compliance() -> None:
    jing_ye_si, huang_he_lou = poetry.check_tones(JING_YE_SI), poetry.check_tones(HUANG_HE_LOU)
    assert jing_ye_si is not None and (jing_ye_si.compliant, jing_ye_si.constrained) == (10, 12)
    assert huang_he_lou is not None and (huang_he_lou.compliant, huang_he_lou.constrained) == (30, 32)
    assert not jing_ye_si.passed and not huang_he_lou.passed


def test_san_ping_wei_is_flagged_even_where_positions_are_free() -> None:
    report = poetry.check_tones("白日依山尽，黄河入海流。\n欲穷千里目，更上高层楼。")  # 高层楼: 平平平
    assert report is not None
    assert report.compliance == 1.0  # 高 sits on the free third position
    assert report.san_ping_wei_lines == (4,)
    assert not report.passed


def test_gu_ping_is_flagged_and_its_remedy_is_not() -> None:
    gu_ping = poetry.check_tones("白日依山尽，一河入海流。\n欲穷千里目，更上一层楼。")  # 仄平仄仄平
    remedied = poetry.check_tones("白日依山尽，一河流海流。\n欲穷千里目，更上一层楼。")  # 仄平平仄平
    assert gu_ping is not None and gu_ping.gu_ping_lines == (2,) and not gu_ping.passed
    assert remedied is not None and remedied.gu_ping_lines == ()


def test_tones_are_only_checked_on_regulated_forms() -> None:
    assert poetry.check_tones("白日依山尽，黄河入海流。") is None


def test_shuffled_and_truncated_poems_score_lower() -> None:
    shuffled = [shuffle_characters(poem, seed) for seed, poem in enumerate(REGULATED)]
    truncated = [poem.rsplit("，", 1)[0] for poem in REGULATED]
    real, scrambled, cut = (poetry.score_poems(p) for p in (REGULATED, shuffled, truncated))
    assert real["tone_compliance"] == 1.0 and real["rhyme_rate"] == 1.0
    assert scrambled["tone_compliance"] is not None and scrambled["tone_compliance"] < 0.8
    assert scrambled["rhyme_rate"] is not None and scrambled["rhyme_rate"] < 1.0
    assert cut["regulated_form_rate"] == 0.0 and cut["tone_compliance"] is None


def test_distinct_n() -> None:
    assert poetry.distinct_n(["床前明月光", "床前明月光"], 1) == 0.5
    assert poetry.distinct_n(["床前明月光", "床前明月光"], 2) == 0.5
    assert poetry.distinct_n([DENG_GUAN_QUE_LOU], 1) == 1.0
    # n-grams stay inside a line: 光疑 is not a bigram.
    assert poetry.distinct_n(["床前明月光，疑是地上霜。"], 2) == 1.0
    assert poetry.distinct_n(["床前，疑是"], 2) == 1.0 and poetry.distinct_n(["床前，疑是"], 3) == 0.0


def test_repeated_line_rate() -> None:
    assert poetry.repeated_line_rate(["白日依山尽，白日依山尽。", DENG_GUAN_QUE_LOU]) == pytest.approx(1 / 6)
    assert poetry.repeated_line_rate(REGULATED) == 0.0


def test_copy_index_finds_verbatim_copies_only() -> None:
    index = CopyIndex([DENG_GUAN_QUE_LOU, CHUN_WANG, DENG_GAO], chunk_size=2)
    assert index.ngram_copy_rate([CHUN_WANG]) == 1.0  # 五言 7-grams run across line breaks
    assert index.line_copy_rate([CHUN_WANG]) == 1.0
    assert index.ngram_copy_rate([ZAO_FA_BAI_DI_CHENG, JING_YE_SI]) == 0.0
    assert index.line_copy_rate([ZAO_FA_BAI_DI_CHENG, JING_YE_SI]) == 0.0
    half_copied = "白日依山尽，黄河入海流。\n举头望明月，低头思故乡。"
    assert index.line_copy_rate([half_copied]) == 0.5
    assert 0.0 < index.ngram_copy_rate([half_copied]) < 0.5


def test_hygiene_rates() -> None:
    generations = ["<think>\n想一想</think>\n" + DENG_GUAN_QUE_LOU, DENG_GUAN_QUE_LOU, "<think>", "hello"]
    assert poetry.think_leak_rate(generations) == 0.5
    assert poetry.strip_thinking(generations[0]) == DENG_GUAN_QUE_LOU
    assert poetry.eos_termination_rate([True, False, True, True]) == 0.75
    assert poetry.non_chinese_rate([JING_YE_SI]) == 0.0
    assert poetry.non_chinese_rate(["床前明月光。", "ok!"]) == pytest.approx(3 / 9)


def test_score_poems_is_json_ready_and_uses_every_input() -> None:
    poems = ["<think>\n</think>\n" + DENG_GUAN_QUE_LOU, ZAO_FA_BAI_DI_CHENG, "白日依山尽"]
    scores = poetry.score_poems(
        poems,
        ["五言绝句", "五言绝句", None],
        stopped_at_eos=[True, True, False],
        reference=CopyIndex([DENG_GUAN_QUE_LOU]),
    )
    assert json.loads(json.dumps(scores)) == scores
    assert scores["n_poems"] == 3
    assert scores["format_accuracy"] == 0.5  # the third poem asked for nothing
    assert scores["regulated_form_rate"] == pytest.approx(2 / 3)
    assert scores["n_regulated"] == 2
    assert scores["think_leak_rate"] == pytest.approx(1 / 3)
    assert scores["eos_termination_rate"] == pytest.approx(2 / 3)
    assert scores["line_copy_rate"] == pytest.approx(5 / 9)  # 白日依山尽 is a reference line too


def test_score_poems_marks_unmeasurable_metrics_none() -> None:
    scores = poetry.score_poems(["白日依山尽"])
    assert scores["format_accuracy"] is None
    assert scores["tone_compliance"] is None
    assert scores["eos_termination_rate"] is None
    assert scores["ngram_copy_rate"] is None
    with pytest.raises(ValueError, match="2 poems but 1 end-token flags"):
        poetry.score_poems(["a", "b"], stopped_at_eos=[True])


def run_score(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = score.main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else {}, err


def test_score_command_reads_jsonl_with_forms_and_a_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    poems = tmp_path / "poems.jsonl"
    rows = [
        {"title": "登鹳雀楼", "content": DENG_GUAN_QUE_LOU, "form": "五言绝句", "stopped_at_eos": True},
        {"content": ZAO_FA_BAI_DI_CHENG, "form": "五言绝句", "stopped_at_eos": False},
    ]
    poems.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    reference = tmp_path / "train.txt"
    reference.write_text(f"{DENG_GUAN_QUE_LOU}\n\n{CHUN_WANG}\n", encoding="utf-8")

    code, scores, _ = run_score([str(poems), "--reference", str(reference)], capsys)
    assert code == 0
    assert scores["format_accuracy"] == 0.5
    assert scores["eos_termination_rate"] == 0.5
    assert scores["line_copy_rate"] == 0.5

    code, scores, _ = run_score([str(poems), "--form", "七言绝句"], capsys)
    assert scores["format_accuracy"] == 0.5 and scores["line_copy_rate"] is None


def test_score_command_reads_blank_line_separated_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    poems = tmp_path / "poems.txt"
    poems.write_text(f"{DENG_GUAN_QUE_LOU}\n\n\n{CHUN_WANG}\n", encoding="utf-8")
    code, scores, _ = run_score([str(poems)], capsys)
    assert code == 0
    assert scores["n_poems"] == 2 and scores["tone_pass_rate"] == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "白日依山尽"}\n', "poems.jsonl:1: no 'content' field with the poem text (found ['text'])"),
        ('{"content": "白日依山尽"}\n{"content": \n', "poems.jsonl:2: not valid JSON"),
        ('{"content": "白日依山尽", "form": "绝句"}\n', "unknown form '绝句'; choose one of 五言绝句"),
        (
            '{"content": "a", "stopped_at_eos": true}\n{"content": "b"}\n',
            "1 of 2 poems have 'stopped_at_eos'",
        ),
        ("\n", "no poems in"),
    ],
)
def test_score_command_explains_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    poems = tmp_path / "poems.jsonl"
    poems.write_text(content, encoding="utf-8")
    code, _, err = run_score([str(poems)], capsys)
    assert code == 2
    assert message in err


def test_score_command_names_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_score([str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2 and f"file not found: {tmp_path / 'missing.jsonl'}" in err
    poems = tmp_path / "poems.txt"
    poems.write_text(DENG_GUAN_QUE_LOU, encoding="utf-8")
    code, _, err = run_score([str(poems), "--reference", str(tmp_path / "train.parquet")], capsys)
    assert code == 2 and "file not found" in err
    with pytest.raises(SystemExit):
        score.main([str(poems), "--form", "绝句"])
    assert "invalid choice: '绝句'" in capsys.readouterr().err


def test_a_form_is_one_table_entry_and_tones_are_judged_only_where_rules_exist() -> None:
    # 王维《田园乐》其六: 六言绝句, one entry in poetry.FORM_TABLE with no 律句 rules modelled
    liu_yan = "桃红复含宿雨，柳绿更带朝烟。\n花落家童未扫，莺啼山客犹眠。"
    assert poetry.classify_form(liu_yan) == "六言绝句" and "六言绝句" in poetry.FORMS
    assert poetry.check_tones(liu_yan) is None  # not scored as if its lines had seven characters
    assert poetry.required_tones(liu_yan) is None and poetry.sticking_and_opposition(liu_yan) == ((), ())
    with pytest.raises(ValueError, match="no tone patterns"):
        poetry.tone_patterns("六言绝句")
    scores = poetry.score_poems([liu_yan, JING_YE_SI], ["六言绝句", "六言绝句"])
    assert scores["format_accuracy"] == 0.5 and scores["n_regulated"] == 1  # only 静夜思 has tone rules
    # every form of the table is a corpus form, and the corpus shapes come after them
    assert poetry.CORPUS_FORMS[: len(poetry.FORMS)] == poetry.FORMS
