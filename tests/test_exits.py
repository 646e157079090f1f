"""One way from a user error to an exit, for every command: the same prefix, exit code 2, no traceback."""

import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON

from poetry_sft.errors import ERROR_PREFIX, USER_ERROR_EXIT

CASES = {  # a command and an input it must refuse
    "poetry_sft": ["method=qlroa"],
    "poetry_sft.plan": ["method=qlroa"],
    "poetry_sft.generate": ["no_such_run", "--title", "登高"],
    "poetry_sft.score": ["no_such_file.jsonl"],
    "poetry_sft.merge": ["no_such_run"],
    "poetry_sft.report": ["no_such_run"],
    "poetry_sft.export": ["no_such_run"],
    "poetry_sft.sweep_report": ["no_such_sweep"],
}


@pytest.mark.parametrize("module", list(CASES))
def test_every_command_reports_a_user_error_the_same_way(module: str, tmp_path: Path):
    result = subprocess.run(
        [PYTHON, "-m", module, *CASES[module]], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == USER_ERROR_EXIT, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert ERROR_PREFIX in result.stderr, result.stderr[-2000:]
    assert not any(tmp_path.iterdir()), "nothing written"
