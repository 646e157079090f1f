"""Offline by default: nothing in the test suite may reach the Hub."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from poetry_sft.config.compose import compose_config, run_config  # noqa: E402, F401 (the tests' helpers)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random-init models are built once per test session, outside the user's cache."""
    os.environ["POETRY_SFT_CACHE"] = str(tmp_path_factory.mktemp("poetry_sft_cache"))


# A handful of real quatrains, few enough for a tiny model to memorise.
POEMS = [
    {"title": "静夜思", "content": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"},
    {"title": "登鹳雀楼", "content": "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"},
    {"title": "春晓", "content": "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。"},
    {"title": "相思", "content": "红豆生南国，春来发几枝。\n愿君多采撷，此物最相思。"},
]


@pytest.fixture
def poems_file(tmp_path: Path) -> Path:
    """A jsonl poem set (4 poems x 8 copies) in the Hub data set's column layout."""
    path = tmp_path / "poems.jsonl"
    rows = [{**poem, "author": "李白"} for poem in POEMS] * 8
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def tiny_overrides(method: str, data_path: Path, steps: int = 3, hardware: str = "8gb") -> list[str]:
    """A run of a few CPU seconds: tiny model, small batches, no intermediate eval/checkpoints."""
    return [
        "model=tiny",
        f"method={method}",
        f"hardware={hardware}",
        f"data.path={data_path}",
        "data.eval_size=4",
        "data.deduplicate=false",  # the fixture repeats its poems on purpose
        "hardware.per_device_train_batch_size=4",
        "hardware.gradient_accumulation_steps=1",
        "hardware.max_length=96",  # chat prompt (~40 tokens) + a quatrain (~30): poems over it are dropped
        f"train.max_steps={steps}",
        "train.logging_steps=1",
        "train.eval_steps=1000",
        "train.save_steps=1000",
    ]


PYTHON = sys.executable


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: None) -> Path:
    """A runs folder holding one short demo run (runs/demo): the README's demo recipe, 10 steps."""
    from poetry_sft.train.sft import train

    runs = tmp_path_factory.mktemp("studio") / "runs"
    overrides = ["recipe=demo", "train.max_steps=10", "train.eval_steps=5", "train.save_steps=5"]
    overrides += ["train.logging_steps=2", "data.max_samples=400", "sample_titles=[]", "data.eval_size=16"]
    overrides += ["hardware.per_device_train_batch_size=8"]
    overrides += [
        "generation.report=false",
        "generation.showcase=false",
        "generation.num_eval_poems=2",
        "generation.eval_max_new_tokens=40",
    ]
    train(run_config(overrides), runs / "demo")
    return runs


@pytest.fixture
def sleeper():
    """A live process that is not us: stands in for a run still training in the directory."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def kill_at_checkpoint(command: list[str], run_dir: Path, step: int, cwd: Path) -> None:
    """Start `command` (a training run into run_dir) and SIGKILL it once checkpoint-<step> is complete: no
    cleanup, no atexit, as an OOM kill or a power cut."""
    import signal
    import time

    from poetry_sft.run import artifacts

    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    while not artifacts.is_complete_checkpoint(run_dir / "checkpoints" / f"checkpoint-{step}"):
        assert proc.poll() is None and time.monotonic() < deadline, "ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
