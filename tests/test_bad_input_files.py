"""The bad-input matrix: every case is one paragraph naming the problem and the fix, exit code != 0, no
traceback, and nothing of the user's lost or overwritten.

Data files go through the training path (in-process, where the data pipeline reads them; two cases also
through `python -m poetry_sft`, and all of them there under -m slow) and through `python -m poetry_sft.score`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import POEMS, PYTHON, run_config, tiny_overrides

from poetry_sft.errors import DataFileError, PoetrySFTError
from poetry_sft.training import train

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
    command = [PYTHON, "-m", "poetry_sft.score", *map(str, args)]
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
    assert result.stderr.startswith("error: ")
    assert_one_paragraph(result.stderr, str(path), *expected)
    assert path.read_bytes() == content


def test_good_files_of_every_type_still_train_and_score(tmp_path: Path):
    from poetry_sft.config import Vocabulary
    from poetry_sft.data import prepare_poems
    from poetry_sft.random_model import build_tokenizer

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
    title: str, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from poetry_sft import generate

    out = tmp_path / "poems.jsonl"
    assert generate.main([str(finished_run), "--title", "静夜思", "--title", title, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    token = next(
        t for t in ("<|im_end|>", "<|im_start|>", "</think>", "<think>", "<|endoftext|>") if t in title
    )
    assert_one_paragraph(error, f"the title {title!r} holds", token, "Training drops such", "Fix: remove")
    assert not out.exists(), "nothing half-written"


def test_control_tokens_are_one_definition_for_training_and_generation(finished_run: Path):
    from poetry_sft import data, generate
    from poetry_sft.artifacts import load_run_config
    from poetry_sft.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(finished_run / "model"))
    pattern = data.control_token_pattern(tokenizer)
    assert all(pattern.search(title) for title in CONTROL_TITLES)
    cfg = load_run_config(finished_run).data
    with pytest.raises(PoetrySFTError, match="holds <think>"):
        data.generation_prompt(tokenizer, cfg, "<think>")  # the studio, eval and merge prompts too
    assert "<think>" in generate.THINK_TOKENS


def test_training_refuses_eval_titles_holding_control_tokens_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from poetry_sft import training

    data = tmp_path / "poems.jsonl"
    data.write_text(JSONL, encoding="utf-8")
    monkeypatch.setattr(training, "load_model", lambda *a: pytest.fail("the model was loaded"))
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

    from poetry_sft import generate, merge
    from poetry_sft.artifacts import load_run_config

    out = tmp_path / "my merged"  # a space: the printed command must quote it
    assert merge.main([str(finished_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    command = next(line.strip() for line in printed.splitlines() if "poetry_sft.generate" in line)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "poetry_sft.generate"] and "--model" in argv

    used: list = []
    real = generate.generate_poems
    monkeypatch.setattr(generate, "generate_poems", lambda *a, **k: used.append(a[3]) or real(*a, **k))
    greedy = ["--greedy", "--max-new-tokens", "16"]
    assert generate.main([*argv[3:], *greedy, "--out", str(tmp_path / "merged.jsonl")]) == 0
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
