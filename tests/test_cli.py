"""`poetry-sft <verb>`: every verb's --help, the unknown-verb hint, and the mission's commands unchanged."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYTHON

from poetry_sft.cli import VERBS, is_train_argument
from poetry_sft.errors import ERROR_PREFIX, USER_ERROR_EXIT

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("poetry-sft")  # the console script of `pip install -e .`


def _run(args: list[str], cwd: Path, command: list[str] | None = None) -> subprocess.CompletedProcess:
    command = command or [PYTHON, "-m", "poetry_sft"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_lists_every_verb_with_one_line(tmp_path: Path):
    result = _run(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for verb, (_, line) in VERBS.items():
        assert f"  {verb} " in result.stdout and line in result.stdout
    assert _run([], tmp_path).stdout == result.stdout  # a bare command shows the same list


@pytest.mark.skipif(not SCRIPT.exists(), reason="the poetry-sft console script is not installed here")
def test_the_console_script_is_the_same_command(tmp_path: Path):
    result = _run(["--help"], tmp_path, command=[str(SCRIPT)])
    assert result.returncode == 0 and "verbs:" in result.stdout


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_help_that_exits_0(verb: str, tmp_path: Path):
    result = _run([verb, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "usage: poetry-sft" in result.stdout
    assert not any(tmp_path.iterdir()), "--help writes nothing"


def test_an_unknown_verb_gets_the_closest_one(tmp_path: Path):
    result = _run(["genrate", "runs/x"], tmp_path)
    assert result.returncode == USER_ERROR_EXIT
    assert ERROR_PREFIX in result.stderr and "Did you mean 'poetry-sft generate'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sweep-report" in _run(["sweep_report", "--help"], tmp_path).stdout  # _ for - is accepted


def test_train_is_the_verb_when_an_override_or_flag_comes_first():
    assert all(map(is_train_argument, ["method=qlora", "+trainer.x=1", "~method", "-m", "--cfg"]))
    assert not any(map(is_train_argument, ["generate", "genrate", "runs/x"]))


@pytest.mark.parametrize(
    "args",
    [
        ["--cfg", "job", "method=qlora", "hardware=8gb"],  # the mission's command, printed not trained
        ["train", "--cfg", "job", "method=qlora", "hardware=8gb"],
    ],
)
def test_the_mission_command_composes_with_and_without_the_verb(args: list[str], tmp_path: Path):
    result = _run(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "name: qlora" in result.stdout and "vram_gib: 8" in result.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_lora_still_reaches_the_train_command(tmp_path: Path):
    """`make train-lora` runs recipes/lora_8gb through the train verb (--cfg job: compose, train nothing)."""
    result = subprocess.run(
        ["make", "-C", str(ROOT), "train-lora", f"PY={PYTHON}", "ARGS=--cfg job"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "name: lora" in result.stdout and "name: 8gb" in result.stdout
