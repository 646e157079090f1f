"""One way from a user error to an exit, for every command: the same prefix, exit code 2, no traceback."""

import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON

from poetry_sft.errors import ERROR_PREFIX, USER_ERROR_EXIT

CASES = {  # a command line and an input it must refuse
    "train": ["method=qlroa"],
    "plan": ["method=qlroa"],
    "generate": ["no_such_run", "--title", "登高"],
    "score": ["no_such_file.jsonl"],
    "merge": ["no_such_run"],
    "report": ["no_such_run"],
    "export": ["no_such_run"],
    "sweep-report": ["no_such_sweep"],
}


@pytest.mark.parametrize("verb", list(CASES))
def test_every_command_reports_a_user_error_the_same_way(verb: str, tmp_path: Path):
    result = subprocess.run(
        [PYTHON, "-m", "poetry_sft", verb, *CASES[verb]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == USER_ERROR_EXIT, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert ERROR_PREFIX in result.stderr, result.stderr[-2000:]
    assert not any(tmp_path.iterdir()), "nothing written"


def test_the_old_entry_points_still_refuse_the_same_way(tmp_path: Path):
    """`python -m poetry_sft.generate ...` from users' scripts: the same command as the verb."""
    result = subprocess.run(
        [PYTHON, "-m", "poetry_sft.generate", "no_such_run", "--title", "登高"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == USER_ERROR_EXIT and ERROR_PREFIX in result.stderr
    assert "Traceback" not in result.stderr
