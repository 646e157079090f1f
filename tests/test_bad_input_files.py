"""The bad-input matrix: every case is one paragraph naming the problem and the fix, exit code != 0, no
traceback, and nothing of the user's lost or overwritten.

Data files go through the training path (in-process, where the data pipeline reads them; two cases also
through `poetry-sft train`, and all of them there under -m slow) and through `poetry-sft score`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import POEMS, PYTHON, run_config, tiny_overrides

from poetry_sft.errors import DataFileError, PoetrySFTError
from poetry_sft.train.sft import train

ROWS = [{**poem, "author": "李白"} for poem in POEMS] * 2
JSONL = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS)


def _parquet() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS), buffer)
    return buffer.getvalue()


def _broken_line() -> bytes:
    lines = JSONL.splitlines()
    lines[2] = lines[2][:-7]  # line 3 lost its end
    return ("\n".join(lines) + "\n").encode()


# name -> (file name, its bytes, what the message must say)
DATA_FILES: dict[str, tuple[str, Callable[[], bytes], list[str]]] = {
    "empty": ("poems.jsonl", lambda: b"", ["is empty (0 bytes)", "Fix:"]),
    "blank_lines": ("poems.jsonl", lambda: b"\n  \n\n\t\n", ["only blank lines", "Fix:"]),
    "gbk": ("poems.jsonl", lambda: JSONL.encode("gbk"), ["GBK/GB18030", "iconv -f GB18030 -t UTF-8"]),
    "utf16": ("poems.jsonl", lambda: JSONL.encode("utf-16"), ["UTF-16", "iconv -f UTF-16 -t UTF-8"]),
    "broken_jsonl_line": (
        "poems.jsonl",
        _broken_line,
        ["poems.jsonl:3: not valid JSON", "repair or delete line 3"],
    ),
    "jsonl_cut_off": ("poems.jsonl", lambda: JSONL.encode()[:-3], ["poems.jsonl:8:", "looks cut off"]),
    "cut_mid_character": ("poems.jsonl", lambda: JSONL.encode()[:-4], ["cut off", "middle of a character"]),
    "truncated_parquet": (
        "poems.parquet",
        lambda: _parquet()[:600],
        ["is cut off", "copy or download it again"],
    ),
    "not_parquet": ("poems.parquet", lambda: JSONL.encode(), ["is not a Parquet file", "rename it"]),
    "csv_cut_mid_record": (
        "poems.csv",
        lambda: (
            'title,content\n静夜思,"床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"\n春晓,"春眠不觉晓，'.encode()
        ),
        ["poems.csv:4:", "never closes", "cut off mid-record"],
    ),
    "csv_wrong_field_count": (
        "poems.csv",
        lambda: "title,content\n静夜思,床前明月光，疑是地上霜。\n春晓,春眠不觉晓,处处闻啼鸟\n".encode(),
        ["poems.csv:3: 3 field(s) where the header has 2", "double quotes"],
    ),
    "csv_header_only": (
        "poems.csv",
        lambda: b"title,content\n",
        ["has a header (title, content) and no rows"],
    ),
}


def _bad_file(tmp_path: Path, case: str) -> tuple[Path, bytes, list[str]]:
    name, build, expected = DATA_FILES[case]
    path = tmp_path / "data" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content := build())
    return path, content, expected


def assert_one_paragraph(message: str, *expected: str) -> None:
    assert "Traceback" not in message
    assert message.strip() and "\n\n" not in message.strip(), f"one paragraph: {message!r}"
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", DATA_FILES)
def test_bad_data_file_fails_training_before_any_model_loads(case: str, tmp_path: Path):
    path, content, expected = _bad_file(tmp_path, case)
    cfg = run_config([*tiny_overrides("lora", path), f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(DataFileError) as raised:
        train(cfg, tmp_path / "run")
    assert_one_paragraph(str(raised.value), str(path), *expected)
    assert path.read_bytes() == content, "the user's file is never changed"
    assert not (tmp_path / "run" / "model").exists()


def _train_command(tmp_path: Path, path: Path) -> subprocess.CompletedProcess:
    overrides = [*tiny_overrides("lora", path), f"run_dir={tmp_path / 'run'}"]
    return subprocess.run(
        [PYTHON, "-m", "poetry_sft", *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def _check_training_command(case: str, tmp_path: Path) -> None:
    path, content, expected = _bad_file(tmp_path, case)
    result = _train_command(tmp_path, path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert_one_paragraph(result.stderr[result.stderr.index("poetry_sft: error:") :], *expected)
    assert path.read_bytes() == content


@pytest.mark.parametrize("case", ["gbk", "truncated_parquet"])
def test_bad_data_file_from_the_training_command(case: str, tmp_path: Path):
    _check_training_command(case, tmp_path)


@pytest.mark.slow  # one training process per case: ~20 s each on a busy 2-core CPU
@pytest.mark.parametrize("case", sorted(set(DATA_FILES) - {"gbk", "truncated_parquet"}))
def test_every_bad_data_file_from_the_training_command(case: str, tmp_path: Path):
    _check_training_command(case, tmp_path)


def _score(*args: str | Path) -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "poetry_sft", "score", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


# score reads .jsonl/.json/.txt poems and a .parquet/.jsonl/.txt reference; CSV is not a score input
SCORE_CASES = [case for case, (name, _, _) in DATA_FILES.items() if not name.endswith(".csv")]


@pytest.mark.parametrize("case", SCORE_CASES)
def test_bad_data_file_fails_score_with_the_fix(case: str, tmp_path: Path):
    path, content, expected = _bad_file(tmp_path, case)
    if path.suffix == ".parquet":  # parquet is read as the --reference of training poems
        poems = tmp_path / "poems.jsonl"
        poems.write_text(JSONL, encoding="utf-8")
        result = _score(poems, "--reference", path)
    else:
        result = _score(path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("poetry_sft: error: ")
    assert_one_paragraph(result.stderr, str(path), *expected)
    assert path.read_bytes() == content


def test_good_files_of_every_type_still_train_and_score(tmp_path: Path):
    from poetry_sft.config.schema import Vocabulary
    from poetry_sft.data.corpus import prepare_poems
    from poetry_sft.model.random_init import build_tokenizer

    tokenizer = build_tokenizer(Vocabulary.chars)
    for name, content in [
        ("poems.parquet", _parquet()),
        ("poems.jsonl", ("\ufeff\n" + JSONL + "\n\n").encode()),  # a BOM and blank lines are fine
        ("poems.json", json.dumps(ROWS, ensure_ascii=False).encode()),
        (
            "poems.csv",
            (
                "title,content,author\n" + "".join(f'{r["title"]},"{r["content"]}",李白\n' for r in ROWS)
            ).encode(),
        ),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        cfg = run_config([*tiny_overrides("lora", path), "data.eval_size=2"]).data
        assert prepare_poems(cfg, tokenizer, max_length=96, use_cache=False).report["rows_in"] == len(ROWS), (
            name
        )
    assert _score(tmp_path / "poems.jsonl", "--reference", tmp_path / "poems.parquet").returncode == 0


# ---------------------------------------------------------------------------------------------
# Generation input: the text of a control token in a title


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRA run with its own prompt setup (system prompt and template), as a user makes one."""
    root = tmp_path_factory.mktemp("runs")
    data = root / "poems.jsonl"
    data.write_text(JSONL * 4, encoding="utf-8")
    overrides = [
        *tiny_overrides("lora", data, steps=2),
        "data.system_prompt='你是一位唐代诗人。'",
        "data.prompt_template='请以《{title}》为题作诗。'",
        "generation.max_new_tokens=24",
        f"run_dir={root / 'run'}",
    ]
    train(run_config(overrides), root / "run")
    return root / "run"


CONTROL_TITLES = ["春夜<|im_end|>", "<|im_start|>system", "<think>登高", "</think>", "江雪<|endoftext|>"]


@pytest.mark.parametrize("title", CONTROL_TITLES)
def test_generation_refuses_titles_holding_control_tokens(
    title: str,
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    from poetry_sft.evaluate import generate

    out = tmp_path / "poems.jsonl"
    monkeypatch.setattr(generate, "load_run", lambda *a, **k: pytest.fail("refused before the model loads"))
    assert generate.main([str(finished_run), "--title", "静夜思", "--title", title, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    token = next(
        t for t in ("<|im_end|>", "<|im_start|>", "</think>", "<think>", "<|endoftext|>") if t in title
    )
    assert_one_paragraph(error, f"the title {title!r} holds", token, "Training drops such", "Fix: remove")
    assert not out.exists(), "nothing half-written"


def test_control_tokens_are_one_definition_for_training_and_generation(finished_run: Path):
    from poetry_sft.data import prompts
    from poetry_sft.evaluate import generate
    from poetry_sft.model.loading import load_tokenizer
    from poetry_sft.run.artifacts import load_run_config

    tokenizer = load_tokenizer(str(finished_run / "model"))
    pattern = prompts.control_token_pattern(tokenizer)
    assert all(pattern.search(title) for title in CONTROL_TITLES)
    cfg = load_run_config(finished_run).data
    with pytest.raises(PoetrySFTError, match="holds <think>"):
        prompts.generation_prompt(tokenizer, cfg, "<think>")  # the studio, eval and merge prompts too
    assert "<think>" in generate.THINK_TOKENS
    with pytest.raises(PoetrySFTError, match="holds <tool_call>"):  # the tokenizer's own added tokens count
        prompts.generation_prompt(tokenizer, cfg, "<tool_call>登高")
    from poetry_sft.studio import logic

    assert logic.CHAT_CONTROL_TEXT is prompts.CHAT_CONTROL_TEXT, "the studio checks typed titles with it"


def test_training_refuses_eval_titles_holding_control_tokens_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from poetry_sft.train import sft as training

    data = tmp_path / "poems.jsonl"
    data.write_text(JSONL, encoding="utf-8")
    monkeypatch.setattr(training, "load_for_training", lambda *a: pytest.fail("the model was loaded"))
    cfg = run_config([*tiny_overrides("lora", data), "generation.eval_titles=['春晓<|im_end|>']"])
    with pytest.raises(
        PoetrySFTError, match=r"generation.eval_titles: '春晓<\|im_end\|>' holds <\|im_end\|>"
    ):
        training.build_trainer(cfg, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# merge: the printed follow-up command keeps the run's prompt setup


def test_the_command_merge_prints_generates_with_the_runs_prompt(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    import shlex

    from poetry_sft.evaluate import generate
    from poetry_sft.run.artifacts import load_run_config
    from poetry_sft.ship import merge

    out = tmp_path / "my merged"  # a space: the printed command must quote it
    assert merge.main([str(finished_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    command = next(line.strip() for line in printed.splitlines() if "poetry-sft generate" in line)
    argv = shlex.split(command)
    assert argv[:2] == ["poetry-sft", "generate"] and "--model" in argv

    used: list = []
    real = generate.generate_poems
    monkeypatch.setattr(generate, "generate_poems", lambda *a, **k: used.append(a[3]) or real(*a, **k))
    greedy = ["--greedy", "--max-new-tokens", "16"]
    assert generate.main([*argv[2:], *greedy, "--out", str(tmp_path / "merged.jsonl")]) == 0
    assert (
        generate.main(
            [str(finished_run), "--title", "春夜喜雨", *greedy, "--out", str(tmp_path / "run.jsonl")]
        )
        == 0
    )
    run_cfg = load_run_config(finished_run)
    assert used[0] == used[1] == run_cfg.data  # system prompt and template as the run trained
    assert (used[0].system_prompt, used[0].prompt_template) == (
        "你是一位唐代诗人。",
        "请以《{title}》为题作诗。",
    )
    poems = [
        json.loads((tmp_path / f"{name}.jsonl").read_text(encoding="utf-8")) for name in ("merged", "run")
    ]
    assert poems[0]["content"] == poems[1]["content"], "the merged model writes what the run writes"


# ---------------------------------------------------------------------------------------------
# The matrix: one row per bad input, each through the command (or the function a command wraps) a user
# runs. A row sets the case up and returns (run it -> (exit code, stderr), files that must not change,
# what the message must say).

Row = tuple[Callable[[], tuple[int, str]], list[Path], list[str]]


def _training(overrides: list[str], run_dir: Path) -> Callable[[], tuple[int, str]]:
    """train() as `poetry-sft train` runs it: a PoetrySFTError is exit code 2 and its message."""

    def run() -> tuple[int, str]:
        try:
            train(run_config([*overrides, f"run_dir={run_dir}"]), run_dir)
        except PoetrySFTError as err:
            return 2, f"poetry_sft: error: {err}"
        return 0, ""

    return run


def _main(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]):
    def run() -> tuple[int, str]:
        code = main(argv)
        err = capsys.readouterr().err
        start = re.search(r"(?m)^poetry_sft: error: ", err)  # after the progress bars of loading the model
        return code, err[start.start() :] if start else err

    return run


def _data_row(case: str, tmp_path: Path, run: Path, capsys) -> Row:
    path, _, expected = _bad_file(tmp_path, case)
    return _training(tiny_overrides("lora", path), tmp_path / "run"), [path], expected


def _score_row(case: str, tmp_path: Path, run: Path, capsys) -> Row:
    from poetry_sft.evaluate import score

    path, _, expected = _bad_file(tmp_path, case)
    return _main(score.main, [str(path)], capsys), [path], expected


def _fake_checkpoint(run_dir: Path, step: int = 2) -> Path:
    from safetensors.torch import save
    from torch import zeros

    path = run_dir / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(save({"lora_A": zeros(2, 2)}))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path / "adapter_model.safetensors"


def _checkpoints_not_ours(tmp_path: Path, run: Path, capsys) -> Row:
    data = tmp_path / "poems.jsonl"
    data.write_text(JSONL, encoding="utf-8")
    weights = _fake_checkpoint(tmp_path / "run")
    return _training(tiny_overrides("lora", data), tmp_path / "run"), [weights], ["not written by poetry_sft"]


def _resume_with_another_config(tmp_path: Path, run: Path, capsys) -> Row:
    from poetry_sft.run.artifacts import save_run_config

    data = tmp_path / "poems.jsonl"
    data.write_text(JSONL, encoding="utf-8")
    save_run_config(
        run_config([*tiny_overrides("lora", data), f"run_dir={tmp_path / 'run'}"]), tmp_path / "run"
    )
    weights = _fake_checkpoint(tmp_path / "run")
    changed = [*tiny_overrides("lora", data), "method.learning_rate=1e-3"]
    expected = ["different config (method.learning_rate: 0.0002 -> 0.001)", "Fix:"]
    return _training(changed, tmp_path / "run"), [weights, tmp_path / "run" / "config.yaml"], expected


def _retrain_a_finished_run(tmp_path: Path, run: Path, capsys) -> Row:
    from poetry_sft.run.artifacts import load_run_config

    cfg = load_run_config(run)
    overrides = [*tiny_overrides("lora", Path(cfg.data.path), steps=2)]
    overrides += [
        "data.system_prompt='你是一位唐代诗人。'",
        "data.prompt_template='请以《{title}》为题作诗。'",
    ]
    overrides.append("generation.max_new_tokens=24")
    kept = [run / "metrics.json", run / "model" / "adapter_model.safetensors", run / "config.yaml"]
    return _training(overrides, run), kept, ["already holds a finished run", "never overwritten", "Fix:"]


def _generate_row(args: list[str], expected: list[str], files: dict[str, bytes] | None = None):
    def row(tmp_path: Path, run: Path, capsys) -> Row:
        from poetry_sft.evaluate import generate

        written = []
        for name, content in (files or {}).items():
            (tmp_path / name).write_bytes(content)
            written.append(tmp_path / name)
        argv = [str(run), *(a.replace("TMP", str(tmp_path)) for a in args)]
        return _main(generate.main, argv, capsys), written, expected

    return row


def _merge_full_run(tmp_path: Path, run: Path, capsys) -> Row:
    from poetry_sft.ship import merge

    full = tmp_path / "full"
    (full / "model").mkdir(parents=True)
    (full / "model" / "config.json").write_text("{}")
    (full / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    return (
        _main(merge.main, [str(full)], capsys),
        [full / "model" / "config.json"],
        ["already is a standalone model"],
    )


def _merge_into_users_folder(tmp_path: Path, run: Path, capsys) -> Row:
    from poetry_sft.ship import merge

    mine = tmp_path / "mine" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes", encoding="utf-8")
    argv = [str(run), "--out", str(mine.parent)]
    return _main(merge.main, argv, capsys), [mine], ["exists and is not empty", "never overwritten", "Fix:"]


def _merge_not_a_run(tmp_path: Path, run: Path, capsys) -> Row:
    from poetry_sft.ship import merge

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8")
    return _main(merge.main, [str(folder)], capsys), [folder / "a.jpg"], ["has no saved adapter"]


def _sweep_whose_jobs_fail(tmp_path: Path, run: Path, capsys) -> Row:
    data = tmp_path / "poems.jsonl"
    data.write_text(JSONL, encoding="utf-8")
    sweep = tmp_path / "sweep"
    command = [PYTHON, "-m", "poetry_sft", "-m", *tiny_overrides("lora", data), "method.learning_rate=-1,-2"]
    command.append(f"hydra.sweep.dir={sweep}")

    def run() -> tuple[int, str]:
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert (sweep / "summary.md").is_file(), "the summary is written before the sweep fails"
        return result.returncode, result.stderr[result.stderr.index("poetry_sft: error:") :]

    return run, [data], ["2 of 2 sweep jobs failed", "must be a positive number", "Fix:"]


MATRIX: dict[str, Callable[..., Row]] = {
    **{
        f"train:{case}": functools.partial(_data_row, case)
        for case in ("empty", "gbk", "broken_jsonl_line", "truncated_parquet", "csv_cut_mid_record")
    },
    **{
        f"score:{case}": functools.partial(_score_row, case)
        for case in ("blank_lines", "utf16", "cut_mid_character")
    },
    "checkpoints:not_written_by_poetry_sft": _checkpoints_not_ours,
    "checkpoints:resume_with_another_config": _resume_with_another_config,
    "run_dir:retrain_a_finished_run": _retrain_a_finished_run,
    "generate:title_with_im_end": _generate_row(["--title", "春夜<|im_end|>"], ["holds <|im_end|>", "Fix:"]),
    "generate:titles_file_gbk": _generate_row(
        ["--titles-file", "TMP/titles.txt"],
        ["GBK/GB18030", "iconv"],
        {"titles.txt": "春夜喜雨\n登高\n".encode("gbk")},
    ),
    "generate:titles_file_broken_line": _generate_row(
        ["--titles-file", "TMP/titles.jsonl"],
        ["titles.jsonl:2: not valid JSON", "repair or delete line 2"],
        {"titles.jsonl": '{"title": "登高"}\n{"title": "春\n'.encode()},
    ),
    "generate:titles_file_with_think": _generate_row(
        ["--titles-file", "TMP/titles.txt"],
        ["holds <think>", "Fix:"],
        {"titles.txt": "登高\n<think>春晓\n".encode()},
    ),
    "generate:out_exists": _generate_row(
        ["--title", "登高", "--out", "TMP/mine.jsonl"],
        ["never overwritten"],
        {"mine.jsonl": b'{"mine": 1}\n'},
    ),
    "merge:a_full_run": _merge_full_run,
    "merge:into_the_users_folder": _merge_into_users_folder,
    "merge:not_a_run": _merge_not_a_run,
    "sweep:jobs_failed": _sweep_whose_jobs_fail,
}


@pytest.mark.parametrize("case", MATRIX)
def test_bad_input_matrix(case: str, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run, protected, expected = MATRIX[case](tmp_path, finished_run, capsys)
    before = {path: _digest(path) for path in protected}
    code, error = run()
    assert code != 0
    assert error.startswith("poetry_sft: error: "), error
    assert_one_paragraph(error, *expected)
    assert {path: _digest(path) for path in protected} == before, "nothing of the user's is changed"


def test_the_matrix_is_broad():
    kinds = {case.split(":")[0] for case in MATRIX}
    assert len(MATRIX) >= 15 and {"train", "score", "checkpoints", "generate", "merge", "sweep"} <= kinds


def test_a_full_disk_for_the_data_cache_does_not_stop_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    import errno
    import logging

    from poetry_sft.config.schema import Vocabulary
    from poetry_sft.data import corpus as data
    from poetry_sft.model.random_init import build_tokenizer

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "poems.jsonl"
    path.write_text(JSONL, encoding="utf-8")
    monkeypatch.setattr(data, "_save", disk_full)
    cfg = run_config([*tiny_overrides("lora", path), "data.eval_size=2"]).data
    with caplog.at_level(logging.WARNING):
        prepared = data.prepare_poems(cfg, build_tokenizer(Vocabulary.chars), max_length=96)
    assert len(prepared.train) == len(ROWS) - 2 and "going on without the cache" in caplog.text
