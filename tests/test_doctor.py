"""The doctor and the environment preflight: what this machine can train, said before a run starts."""

import logging
import subprocess

import pytest
import torch
from conftest import PYTHON, run_config

from poetry_sft.errors import ConfigError
from poetry_sft.model import doctor


def test_doctor_runs_on_cpu_and_names_versions_and_the_fix():
    done = subprocess.run([PYTHON, "-m", "poetry_sft", "doctor"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"torch        {torch.__version__}" in done.stdout
    assert "CPU only" in done.stdout and "pip install torch==2.13.0" in done.stdout
    assert "fp32: no CUDA GPU" in done.stdout and "GiB free" in done.stdout


class _Props:
    total_memory = 15 * 2**30


def test_doctor_on_a_t4_picks_its_profile_and_fp16(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: _Props())
    text = doctor.report()
    assert "Tesla T4, 15.0 GiB, compute capability 7.5" in text
    assert "hardware=t4" in text and "no (emulated only" in text
    assert "fp16: Tesla T4 (sm_75) has no native bf16" in text


@pytest.mark.parametrize(
    ("gib", "profile"), [(4, "4gb"), (6, "6gb"), (8, "8gb"), (11.6, "12gb"), (24, "12gb")]
)
def test_the_profile_follows_the_card(gib: float, profile: str):
    assert doctor.pick_profile(gib) == profile


def test_bitsandbytes_that_cannot_load_names_lora_instead(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(doctor, "bitsandbytes_problem", lambda: "bitsandbytes does not load here (OSError)")
    with pytest.raises(ConfigError) as err:
        doctor.check_environment(run_config(["method=qlora", "hardware=4gb"]))
    assert "method=qlora needs bitsandbytes" in str(err.value) and "method=lora" in str(err.value)
    with pytest.raises(ConfigError, match="optimizer adamw_8bit needs bitsandbytes"):
        doctor.check_environment(run_config(["method=lora", "hardware=4gb"]))
    doctor.check_environment(run_config(["method=lora", "hardware=8gb"]))  # adamw_torch: fine


def test_a_gpu_profile_on_cpu_torch_warns_with_the_time_and_the_install(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        doctor.check_environment(run_config(["method=lora", "hardware=8gb"]))
    assert "No CUDA GPU" in caplog.text and "hours" in caplog.text and "pip install torch" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        doctor.check_environment(run_config(["recipe=demo"]))  # the CPU demo: nothing to warn about
    assert "No CUDA GPU" not in caplog.text
