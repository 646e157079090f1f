"""The bad-input and fault matrix of docs/bad_inputs.md (bench/bad_inputs.py), and a fast test for each
command's cases that the other bad-input files do not cover.

The whole matrix (about a hundred commands, the runs it trains, the tmpfs and read-only mounts it makes)
runs under `pytest -m slow`, every case required GOOD. By default: the grader itself, the matrix's reach,
and the targeted tests below (in-process where a command's main can be called, a subprocess where only
the command line shows the behaviour).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import POEMS, PYTHON, run_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "bench" / "bad_inputs.py")
assert _spec is not None and _spec.loader is not None
matrix = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = matrix  # dataclasses look their module up there
_spec.loader.exec_module(matrix)


# ---------------------------------------------------------------------------------------------
# The matrix


def test_the_matrix_reaches_every_command_with_60_cases_beyond_the_issues():
    verbs = {case.id.split(":")[0] for case in matrix.CASES}
    commands = {"train", "sweep", "sweep-report", "generate", "score", "report", "merge", "export", "push"}
    assert commands | {"plan", "doctor", "studio", "cli"} <= verbs
    assert sum(not case.issue for case in matrix.CASES) >= 60
    assert len({case.id for case in matrix.CASES}) == len(matrix.CASES), "ids are unique"


def _graded(case_id: str, rc: int | None, stderr: str, stdout: str = "", changed=()) -> str:
    case = next(c for c in matrix.CASES if c.id == case_id)
    return matrix.grade(case, rc, stdout, stderr, list(changed), Path("."))[0]


def test_the_grader_tells_good_ok_and_bad():
    good = "poetry_sft: error: method.r=abc: not an integer\n  Fix: method.r takes an integer"
    assert _graded("train:type-error", 2, good) == "GOOD"
    assert _graded("train:type-error", 1, good) == "OK", "another exit code"
    assert _graded("train:type-error", 2, good.split("\n")[0]) == "OK", "no fix"
    assert _graded("train:type-error", 2, "Error merging override method.r=abc") == "OK", "not ours"
    assert _graded("train:type-error", 2, "poetry_sft: error: x\n  Fix: y") == "OK", "the key is not named"
    assert _graded("train:type-error", 1, "Traceback (most recent call last):\n  ...\nValueError") == "BAD"
    assert _graded("train:type-error", 2, good, changed=["mine/notes.txt"]) == "BAD", "a user's file changed"
    assert _graded("train:max-steps-zero", 0, "", "finished") == "BAD", "a run that should not have trained"
    assert _graded("generate:max-new-tokens-huge", None, "") == "BAD", "a hang"
    argparse_error = "usage: poetry-sft doctor [-h]\npoetry-sft doctor: error: unrecognized arguments: --gpu"
    assert _graded("doctor:unknown-flag", 2, argparse_error) == "GOOD"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return matrix.Fixtures(tmp_path_factory.mktemp("matrix_fixtures"), env), env


@pytest.mark.slow  # about a hundred commands, and the runs they need trained first: ~15 min on 2 busy cores
@pytest.mark.parametrize("case", matrix.CASES, ids=lambda case: case.id)
def test_every_case_of_the_matrix_is_good(case, fixtures, tmp_path: Path):
    fx, env = fixtures
    result = matrix.run_case(case, fx, env, tmp_path)
    if result["grade"] == "n/a":
        pytest.skip(result["note"])
    assert result["grade"] == "GOOD", result["note"]


# ---------------------------------------------------------------------------------------------
# A finished run, for the commands that read one (in-process, a 1-step tiny LoRA run)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: None) -> Path:
    from poetry_sft.train.sft import train

    root = tmp_path_factory.mktemp("matrix_run")
    poems = root / "poems.jsonl"
    poems.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in POEMS * 8), encoding="utf-8")
    train(run_config([*tiny_overrides("lora", poems, steps=1), f"run_dir={root / 'run'}"]), root / "run")
    return root / "run"


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    start = err.index("poetry_sft: error: ")
    message = err[start:].strip()
    assert "Traceback" not in err and "\n\n" not in message and "Fix" in message, err
    return message


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# generate


@pytest.mark.parametrize("title", ["", "，。", "……"])
def test_generate_refuses_a_title_without_words_before_the_model_loads(
    title: str, finished: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    from poetry_sft.evaluate import generate

    monkeypatch.setattr(generate, "load_run", lambda *a, **k: pytest.fail("refused before the model loads"))
    assert generate.main([str(finished), "--title", "春晓", "--title", title]) == 2
    assert f"the title {title!r} has no words" in _error(capsys)


def test_generate_refuses_an_out_it_cannot_write_before_the_model_loads(
    finished: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    from poetry_sft.evaluate import generate

    monkeypatch.setattr(generate, "load_run", lambda *a, **k: pytest.fail("refused before the model loads"))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "shared")
    out = tmp_path / "shared" / "poems.jsonl"
    out.parent.mkdir()
    assert generate.main([str(finished), "--title", "春晓", "--out", str(out)]) == 2
    assert f"cannot write the poems to {out}" in _error(capsys)


def test_generate_on_a_folder_that_is_not_a_run_names_the_fix(tmp_path: Path, capsys):
    from poetry_sft.evaluate import generate

    (tmp_path / "notes.txt").write_text("mine")
    assert generate.main([str(tmp_path), "--title", "春晓"]) == 2
    error = _error(capsys)
    assert "is not a poetry_sft run directory" in error and "--model DIR" in error


def test_generate_on_an_empty_model_folder_says_it_is_empty(tmp_path: Path, capsys):
    from poetry_sft.evaluate import generate

    (tmp_path / "empty").mkdir()
    assert generate.main(["--model", str(tmp_path / "empty"), "--title", "春晓"]) == 2
    error = _error(capsys)
    assert "it is empty" in error and "hf download Qwen/Qwen3-0.6B" in error
    assert "neither a local directory" not in error


# ---------------------------------------------------------------------------------------------
# train: data, model folder, sweep folder, Ctrl-C, the stale lock's log line


def test_a_content_column_of_lists_is_refused_with_the_fix(tmp_path: Path):
    from poetry_sft.config.schema import Vocabulary
    from poetry_sft.data.corpus import prepare_poems
    from poetry_sft.errors import DataFileError
    from poetry_sft.model.random_init import build_tokenizer

    path = tmp_path / "poems.jsonl"
    rows = [{**p, "content": p["content"].split("\n")} for p in POEMS] * 4
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = run_config(tiny_overrides("lora", path)).data
    with pytest.raises(DataFileError) as raised:
        prepare_poems(cfg, build_tokenizer(Vocabulary.chars), max_length=96, use_cache=False)
    assert "its column 'content' holds lists" in str(raised.value) and "join" in str(raised.value)


def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [PYTHON, "-m", "poetry_sft", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_model_folder_without_a_model_is_refused_at_preflight(poems_file: Path, tmp_path: Path):
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "README.md").write_text("download here")
    overrides = [o for o in tiny_overrides("lora", poems_file) if not o.startswith("model=")]
    result = _cli(*overrides, "model=qwen3_0.6b", "model.name_or_path=./qwen", "run_dir=r", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "it holds README.md, not a model's config.json" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["a-users-folder", "a-file"])
def test_a_sweep_into_a_folder_that_is_not_a_sweep_writes_nothing(
    where: str, poems_file: Path, tmp_path: Path
):
    target = tmp_path / "mine"
    if where == "a-file":
        target.write_text("my notes")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("my notes")
    before = _files(tmp_path)
    result = _cli(
        "-m", *tiny_overrides("lora", poems_file), "method.r=4,8", f"hydra.sweep.dir={target}", cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    expected = "is a file" if where == "a-file" else "is a non-empty folder that is not a sweep (notes.txt)"
    assert expected in result.stderr and "Fix: name a" in result.stderr
    assert _files(tmp_path) == before


def test_a_sweep_folder_is_recognised_whichever_sweeper_wrote_it(tmp_path: Path):
    from poetry_sft.errors import RunDirError
    from poetry_sft.run.artifacts import ensure_usable_sweep_dir

    basic, optuna, interrupted, mine = (
        tmp_path / name for name in ("basic", "optuna", "interrupted", "mine")
    )
    (basic / "method.r=8").mkdir(parents=True)
    (basic / "multirun.yaml").write_text("hydra: {}\n")
    optuna.mkdir()
    (optuna / "optimization_results.yaml").write_text("best_value: 1.0\n")
    (interrupted / "method.r=8" / ".hydra").mkdir(parents=True)  # killed before any summary was written
    (interrupted / "method.r=8" / ".hydra" / "overrides.yaml").write_text("- method.r=8\n")
    (mine / "photos").mkdir(parents=True)
    for folder in (basic, optuna, interrupted, tmp_path / "new"):
        ensure_usable_sweep_dir(folder)
    with pytest.raises(RunDirError, match=r"not a sweep \(photos\)"):
        ensure_usable_sweep_dir(mine)


@pytest.mark.slow  # trains until interrupted: ~30 s
def test_ctrl_c_is_one_line_and_the_run_resumes(poems_file: Path, tmp_path: Path):
    import signal
    import time

    overrides = [
        *tiny_overrides("lora", poems_file, steps=400),
        "train.save_steps=5",
        f"run_dir={tmp_path / 'r'}",
    ]
    with subprocess.Popen(
        [PYTHON, "-m", "poetry_sft", *overrides],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:
        deadline = time.time() + 240
        while not list((tmp_path / "r" / "checkpoints").glob("checkpoint-*/trainer_state.json")):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted; " in stderr and "resumes it from checkpoint-" in stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_a_stale_lock_taken_over_is_logged_in_the_runs_log(poems_file: Path, tmp_path: Path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    owner = {"pid": dead.pid, "hostname": socket.gethostname(), "started": "2026-12-01T10:00:00"}
    (run_dir / ".poetry_sft.lock").write_text(json.dumps(owner))
    result = _cli(*tiny_overrides("lora", poems_file, steps=1), f"run_dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    line = f"took over the stale lock of {run_dir}: process {dead.pid} (started 2026-12-01T10:00:00)"
    assert line in (run_dir / "poetry_sft.log").read_text(encoding="utf-8")
    assert "[HYDRA] took over" not in result.stderr, "logged as the run's, not as Hydra's"


# ---------------------------------------------------------------------------------------------
# plan


def test_plan_reports_hydras_refusals_in_our_words(capsys):
    from poetry_sft.model import plan

    assert plan.main(["method.r=abc"]) == 2
    assert "Fix: method.r takes an integer" in _error(capsys)


# ---------------------------------------------------------------------------------------------
# merge and export: a folder that cannot be written, a full disk


def test_merge_into_a_folder_it_cannot_write_is_refused_before_merging(
    finished: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    from poetry_sft.ship import merge

    monkeypatch.setattr(merge, "merged_model", lambda *a, **k: pytest.fail("refused before merging"))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    assert merge.main([str(finished), "--out", str(tmp_path / "merged")]) == 2
    assert "cannot write the merged model" in _error(capsys)


def test_a_full_disk_during_a_merge_is_one_message_and_leaves_nothing(
    finished: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    import errno

    from transformers import PreTrainedModel

    from poetry_sft.ship import merge

    def disk_full(self, directory, *args, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(
            b"\0" * 64
        )  # part of the model, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    out = tmp_path / "merged"
    assert merge.main([str(finished), "--out", str(out)]) == 2
    error = _error(capsys)
    assert f"could not write the merged model to {out}: the disk is full" in error and "--out DIR" in error
    assert not out.exists() and not list(tmp_path.glob(".building-*")), "nothing half-written is left"


# ---------------------------------------------------------------------------------------------
# push


@pytest.fixture
def full_run(finished: Path, tmp_path: Path) -> Path:
    """A finished full fine-tuning run, as far as push can tell (its config says method=full)."""
    run = tmp_path / "full"
    shutil.copytree(finished, run)
    config = run / "config.yaml"
    text = config.read_text(encoding="utf-8").replace("trains: adapter", "trains: all")
    text = text.replace("name: lora", "name: full", 1)
    config.write_text(text, encoding="utf-8")
    return run


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TRANSFORMERS_OFFLINE": "1"}, "TRANSFORMERS_OFFLINE is set"),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "could not reach http://127.0.0.1:9"),
    ],
    ids=["transformers-offline", "no-network"],
)
def test_push_offline_or_unreachable_is_one_message_and_uploads_nothing(
    env: dict[str, str], expected: str, finished: Path, tmp_path: Path
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _files(run)
    environment = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_not_a_real_token", **env}
    result = subprocess.run(
        [PYTHON, "-m", "poetry_sft", "push", str(run), "--repo", "me/poet"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert expected in result.stderr and "Fix:" in result.stderr
    assert "hf_not_a_real_token" not in result.stderr
    assert _files(run) == before, "the run's card is not rewritten"


def test_push_merged_of_a_full_run_uploads_its_model(full_run: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    from poetry_sft.ship import push

    assert push.folder_to_push(full_run, "merged") == full_run / "model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert push.main([str(full_run), "--repo", "me/poet", "--what", "merged"]) == 2
    error = _error(capsys)
    assert "HF_HUB_OFFLINE is set" in error and "poetry-sft merge" not in error


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--repo", "poet"], "Fix: --repo <your user or org>/<name>, e.g. --repo me/poet"),
        (["--repo", "me/poet", "--what", "model"], "Fix: --what adapter"),
    ],
)
def test_push_argument_mistakes_name_the_fix(argv: list[str], expected: str, finished: Path, capsys):
    from poetry_sft.ship import push

    assert push.main([str(finished), *argv]) == 2
    assert expected in _error(capsys)


# ---------------------------------------------------------------------------------------------
# studio


@pytest.mark.parametrize("port", ["99999", "0", "in-use"])
def test_studio_refuses_a_port_it_cannot_serve_before_building_the_page(
    port: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("gradio")
    from poetry_sft.studio import app, command

    monkeypatch.setattr(app, "build", lambda *a, **k: pytest.fail("refused before the page is built"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        given = str(listener.getsockname()[1]) if port == "in-use" else port
        assert command.main(["--runs", str(tmp_path), "--port", given]) == 2
    error = _error(capsys)
    assert (
        ("the port is in use" in error and "lsof -i" in error)
        if port == "in-use"
        else "is not a port" in error
    )


def test_studio_refuses_an_unknown_host_and_a_zero_cache(tmp_path: Path, capsys):
    pytest.importorskip("gradio")
    from poetry_sft.studio import command

    assert command.main(["--runs", str(tmp_path), "--host", "no-such-host.invalid"]) == 2
    assert "--host no-such-host.invalid is not an address" in _error(capsys)
    assert command.main(["--runs", str(tmp_path), "--cache-size", "0"]) == 2
    assert "--cache-size 0 must be at least 1" in _error(capsys)


# ---------------------------------------------------------------------------------------------
# A user's folder under git: refused commands leave `git status` as it was


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_refused_commands_leave_git_status_of_the_users_folder_unchanged(poems_file: Path, tmp_path: Path):
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(poems_file, repo / "poems.jsonl")
    (repo / "notes.txt").write_text("my notes\n")
    (repo / "config.yaml").write_text("learning_rate: 1\n")  # the user's own config.yaml, not a run's
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "mine"]):
        subprocess.run([*git, *command], cwd=repo, check=True, capture_output=True)
    tiny = tiny_overrides("lora", Path("poems.jsonl"))
    for argv in (
        [*tiny, "run_dir=."],  # a run among the user's files
        [*tiny, "method.r=abc"],  # a type error
        [*tiny, "~method"],
        ["-m", *tiny, "method.r=4,abc", "hydra.sweep.dir=."],  # a sweep into the user's folder
        ["generate", ".", "--title", "春晓"],
        ["score", "notes.txt", "--reference", "nope.parquet"],
    ):
        result = _cli(*argv, cwd=repo)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (argv, result.stderr[-2000:])
        status = subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=repo, capture_output=True, text=True
        )
        assert status.stdout == "", (argv, status.stdout)
