"""The bad-input and fault matrix: every command, as a user who mistypes, a disk that fills, a process
that dies would meet it, each case graded GOOD / OK / BAD (docs/bad_inputs.md holds the table).

    python -m bench.bad_inputs                          # this checkout: a table row per case, then the counts
    python -m bench.bad_inputs --source ../main         # another checkout's package (PYTHONPATH), e.g. main
    python -m bench.bad_inputs --only push,studio       # cases whose id starts so
    python -m bench.bad_inputs --json after.json        # the results as JSON, for --table
    python -m bench.bad_inputs --table before.json after.json   # the markdown of docs/bad_inputs.md

Each case runs `python -m poetry_sft ...` in a fresh folder holding the user's files it needs (poems, a
finished run, a diverged run, a damaged one, ...; built once per invocation with the same checkout).

    GOOD  refused with exit 2 and one paragraph `poetry_sft: error: ...` (argparse's `<prog>: error: ...`
          under its usage line counts too) that names the problem (the case's words) and the fix; no
          traceback; the user's files unchanged (nothing written, unless the case is a run that writes).
          A case that should work works; a Ctrl-C is one line and exit 130; a sweep with failed jobs
          exits 1 naming them.
    OK    no traceback and nothing lost, but the message is weak or misleading: no fix, the problem not
          named, another exit code, not our prefix, or an ordinary command refused.
    BAD   a traceback, a hang, a run that says it finished when it did not (or accepts what it must
          refuse), or a user's file changed or lost.

Fault cases that need a small tmpfs or a read-only mount run as root only ("n/a" elsewhere).
"""

# ruff: noqa: E501  (the case table reads best one case a line)
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

QUATRAINS = [  # tests/conftest.py's POEMS
    {"title": "静夜思", "content": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"},
    {"title": "登鹳雀楼", "content": "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"},
    {"title": "春晓", "content": "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。"},
    {"title": "相思", "content": "红豆生南国，春来发几枝。\n愿君多采撷，此物最相思。"},
]
TINY = [  # tests/conftest.py tiny_overrides: a run of a few CPU seconds
    "model=tiny", "method=lora", "hardware=8gb", "data.path=poems.jsonl", "data.eval_size=4",
    "data.deduplicate=false", "hardware.per_device_train_batch_size=4",
    "hardware.gradient_accumulation_steps=1", "hardware.max_length=96", "train.max_steps=2",
    "train.logging_steps=1", "train.eval_steps=1000", "train.save_steps=1000",
]  # fmt: skip
BPE = ["model.random_init.vocabulary=qwen_small", "model.random_init.head_dim=128"]
OFFLINE_PUSH = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_not_a_real_token"}


def tiny(*changes: str) -> list[str]:
    """TINY with `changes` replacing the overrides of the same key."""
    keys = {c.split("=")[0].lstrip("+~") for c in changes}
    return [o for o in TINY if o.split("=")[0] not in keys] + list(changes)


@dataclasses.dataclass
class Case:
    id: str
    argv: list[str]  # after `python -m poetry_sft`; {name} is a file or run of the case's folder
    words: list[str] = dataclasses.field(default_factory=list)  # each must be in the message
    setup: tuple[str, ...] = ()  # what the folder holds (see Folder)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    exit: int = 2  # 2: refused; 0: must work; 1: a sweep whose jobs failed; 130: Ctrl-C
    writes: bool = False  # may add files (a run that trains); existing ones must stay as they were
    interrupt_after: float | None = None  # send Ctrl-C after this many seconds
    root: bool = False  # needs a mount
    issue: bool = False  # one of issue #19's own cases
    check: Callable[[Path], str | None] | None = None  # a look at the folder afterwards: what is wrong
    replaces: tuple[str, ...] = ()  # files the command is meant to change (a stale lock it takes over)
    timeout: int = 240


def _no_metrics(run: str) -> Callable[[Path], str | None]:
    return lambda folder: f"{run}/metrics.json written" if (folder / run / "metrics.json").exists() else None


def _log_says(run: str, text: str) -> Callable[[Path], str | None]:
    def check(folder: Path) -> str | None:
        logs = "".join(p.read_text(errors="replace") for p in (folder / run).glob("*.log"))
        return None if text in logs else f"{run}'s log does not say '{text}'"

    return check


CASES = [
    # --- train: the command line -------------------------------------------------------------
    Case("train:hydra-sweeper-group", ["hydra/sweeper=poetry_optuna", "--cfg", "hydra"], exit=0, issue=True),
    Case("train:hydra-launcher-group", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra"], exit=0, issue=True),
    Case("train:hydra-job-logging", [*tiny("hydra/job_logging=disabled"), "run_dir=r"], exit=0, writes=True, setup=("poems",), issue=True),
    Case("train:flag-after-overrides", ["method=qlora", "--cfg", "job", "hardware=4gb"], exit=0),
    Case("train:cfg-with-multirun", ["-m", "method=lora,qlora", "--cfg", "hydra"], ["--cfg and --multirun"]),
    Case("train:type-error", [*tiny("method.r=abc"), "run_dir=r"], ["method.r", "integer"], ("poems",), issue=True),
    Case("train:float-for-an-int", [*tiny("train.max_steps=1.5"), "run_dir=r"], ["train.max_steps", "integer"], ("poems",)),
    Case("train:bool-typo", [*tiny("generation.do_sample=ture"), "run_dir=r"], ["generation.do_sample", "true or false"], ("poems",)),
    Case("train:enum-typo", [*tiny("train.precision=fp8"), "run_dir=r"], ["train.precision", "bf16"], ("poems",)),
    Case("train:list-as-text", [*tiny("generation.eval_titles=spring"), "run_dir=r"], ["generation.eval_titles", "list"], ("poems",)),
    Case("train:unparsable-override", [*tiny("method.r=["), "run_dir=r"], ["method.r=["], ("poems",)),
    Case("train:delete-a-group", [*tiny("~method"), "run_dir=r"], ["~method", "method="], ("poems",), issue=True),
    Case("train:delete-a-key", [*tiny("~train.max_steps"), "run_dir=r"], ["train.max_steps=-1"], ("poems",), issue=True),
    Case("train:hydra-option-typo", [*tiny("hydra/sweeper=optuan"), "run_dir=r"], ["hydra/sweeper/optuan", "poetry_optuna"], ("poems",)),
    Case("train:max-steps-zero", [*tiny("train.max_steps=0"), "run_dir=r"], ["train.max_steps=0"], ("poems",), issue=True),
    Case("train:absurd-learning-rate", [*tiny("method.learning_rate=1e9"), "run_dir=r"], ["method.learning_rate", "at most 1"], ("poems",), issue=True),
    Case("train:pass-through-type", [*tiny("+trainer.neftune_noise_alpha=abc"), "run_dir=r"], ["trainer.neftune_noise_alpha", "number"], ("poems",), issue=True),
    Case("train:pass-through-of-ours", [*tiny("+trainer.seed=3"), "run_dir=r"], ["trainer.seed", "train.seed"], ("poems",)),
    Case("train:run-dir-empty", [*tiny("run_dir=")], ["not a poetry_sft run"], ("poems",)),
    # --- train: data and model files -------------------------------------------------------------
    Case("train:model-folder-empty", [*tiny("model=qwen3_0.6b", "model.name_or_path=./empty"), "run_dir=r"], ["it is empty", "download"], ("poems", "empty"), issue=True),
    Case("train:model-folder-of-notes", [*tiny("model=qwen3_0.6b", "model.name_or_path=./mine"), "run_dir=r"], ["notes.txt", "config.json"], ("poems", "mine")),
    Case("train:content-as-lists", [*tiny("data.path=lists.jsonl"), "run_dir=r"], ["holds lists", "join"], ("lists",), issue=True),
    Case("train:titles-as-numbers", [*tiny("data.path=numbers.jsonl"), "run_dir=r"], ["'title'", "text"], ("numbers",)),
    Case("train:punctuation-titles", [*tiny("data.path=punct.jsonl"), "run_dir=r"], [], ("punct",), exit=0, writes=True, issue=True, check=lambda f: None if json.loads((f / "r" / "data_report.json").read_text())["dropped"].get("no_title") == 2 else "the punctuation-only titles were trained on"),
    Case("train:content-column-missing", [*tiny("data.content_column=text"), "run_dir=r"], ["'text'", "data.content_column"], ("poems",)),
    Case("train:every-poem-too-long", [*tiny("hardware.max_length=8"), "run_dir=r"], ["too_long_tokens", "hardware.max_length"], ("poems",)),
    Case("train:data-folder-without-poems", [*tiny("data.path=./empty"), "run_dir=r"], ["./empty", "Fix"], ("empty",)),
    # --- train: faults ---------------------------------------------------------------------------
    Case("train:diverging-loss", [*tiny("model.random_init.initializer_range=1e30"), "run_dir=r"], ["training diverged", "Fix: lower method.learning_rate"], ("poems",), writes=True, issue=True, check=_no_metrics("r")),
    Case("train:read-only-run-folder", [*tiny(), "run_dir=ro/run"], ["cannot write to ro/run"], ("poems", "ro"), root=True, issue=True),
    Case("train:read-only-existing-run", [*tiny(), "run_dir=ro"], ["cannot write to ro"], ("poems", "ro-run"), root=True, issue=True),
    Case("train:disk-full-at-start", [*tiny(), "run_dir=disk/run"], ["no space left"], ("poems", "disk-full"), root=True),
    Case("train:disk-full-in-a-checkpoint", [*tiny("train.save_steps=2"), "run_dir=small/run"], ["no space left", "checkpoint"], ("poems", "disk-small"), root=True, writes=True, issue=True, check=lambda f: "a partial checkpoint is left" if list((f / "small/run/checkpoints").glob("checkpoint-*")) else None),
    Case("train:ctrl-c", [*tiny("train.max_steps=400", "train.save_steps=5"), "run_dir=r"], ["interrupted", "resumes"], ("poems",), exit=130, writes=True, interrupt_after=20, check=_no_metrics("r")),
    Case("train:stale-lock", [*tiny(), "run_dir=stale"], [], ("poems", "stale-lock"), exit=0, writes=True, issue=True, check=_log_says("stale", "took over the stale lock"), replaces=("stale/.poetry_sft.lock",)),
    Case("train:resume-an-interrupted-run", [*tiny("train.save_steps=2"), "run_dir=div"], [], ("poems", "diverged"), exit=0, writes=True, check=lambda f: None if (f / "div" / "metrics.json").is_file() else "not finished", replaces=("div/poetry_sft.log", "div/config.yaml", "div/.hydra/config.yaml", "div/.hydra/hydra.yaml", "div/.hydra/overrides.yaml")),
    Case("train:retrain-a-finished-run", [*tiny(), "run_dir=run"], ["already holds a finished run"], ("poems", "run")),
    # --- sweeps ----------------------------------------------------------------------------------
    Case("sweep:optuna-readme-command", ["-m", "hydra/sweeper=poetry_optuna", "hydra.sweeper.n_trials=2", *tiny("train.warmup_ratio=1.5"), "hydra.sweep.dir=s"], ["2 of 2 sweep jobs failed"], ("poems",), exit=1, writes=True, issue=True),
    Case("sweep:slurm-without-slurm", ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", *tiny("method=lora,qlora"), "hydra.sweep.dir=s"], ["srun"], ("poems",), issue=True),
    Case("sweep:type-error-in-a-value", ["-m", *tiny("method.learning_rate=1e-4,abc"), "hydra.sweep.dir=s"], ["method.learning_rate", "number"], ("poems",)),
    Case("sweep:into-the-users-folder", ["-m", *tiny("method.r=4,8"), "hydra.sweep.dir=mine"], ["mine", "not a sweep"], ("poems", "mine")),
    Case("sweep:dir-is-a-file", ["-m", *tiny("method.r=4,8"), "hydra.sweep.dir=notes.txt"], ["notes.txt", "is a file"], ("poems", "notes")),
    Case("sweep:diverging-jobs", ["-m", *tiny("model.random_init.initializer_range=1e30,1e31"), "hydra.sweep.dir=s"], ["2 of 2 sweep jobs failed", "training diverged"], ("poems",), exit=1, writes=True, timeout=400),
    Case("sweep:optuna-no-trials", ["-m", "hydra/sweeper=poetry_optuna", "hydra.sweeper.n_trials=0", *tiny(), "hydra.sweep.dir=s"], ["n_trials"], ("poems",)),
    Case("sweep-report:a-file", ["sweep-report", "poems.jsonl"], ["poems.jsonl"], ("poems",)),
    Case("sweep-report:no-such-folder", ["sweep-report", "nowhere"], ["nowhere"]),
    Case("sweep-report:read-only-sweep", ["sweep-report", "ro"], ["ro"], ("ro-sweep",), root=True),
    # --- plan, doctor, the verbs -----------------------------------------------------------------
    Case("plan:help", ["plan", "--help"], exit=0, issue=True),
    Case("plan:type-error", ["plan", "method.r=abc"], ["method.r", "integer"]),
    Case("plan:delete-a-group", ["plan", "~method"], ["~method"]),
    Case("plan:hydra-group", ["plan", "hydra/job_logging=disabled", "model=tiny"], exit=0),
    Case("plan:empty-model-folder", ["plan", "model.name_or_path=./empty"], ["it is empty"], ("empty",)),
    Case("doctor:unknown-flag", ["doctor", "--gpu"], ["--gpu"]),
    Case("doctor:on-a-cpu-machine", ["doctor"], exit=0),
    Case("cli:unknown-verb", ["genrate", "runs/x"], ["generate"]),
    Case("cli:version", ["--version"], exit=0),
    # --- generate --------------------------------------------------------------------------------
    Case("generate:damaged-config", ["generate", "run", "--title", "春晓"], ["config.yaml is damaged", "Fix"], ("damaged",), issue=True),
    Case("generate:unfinished-run", ["generate", "div", "--title", "春晓"], ["holds no finished run"], ("diverged",), issue=True),
    Case("generate:not-a-run", ["generate", ".", "--title", "春晓"], ["not a poetry_sft run"], ("poems",)),
    Case("generate:empty-title", ["generate", "run", "--title", ""], ["title"], ("run",)),
    Case("generate:punctuation-title", ["generate", "run", "--title", "，。"], ["'，。'"], ("run",)),
    Case("generate:max-new-tokens-huge", ["generate", "run", "--title", "春晓", "--max-new-tokens", "100000000"], ["--max-new-tokens"], ("run",), issue=True, timeout=120),
    Case("generate:top-p-above-1", ["generate", "run", "--title", "春晓", "--top-p", "2"], ["--top-p"], ("run",)),
    Case("generate:rhyme-without-form", ["generate", "run", "--title", "春晓", "--rhyme"], ["--rhyme", "--form"], ("run",)),
    Case("generate:unknown-rhyme-group", ["generate", "run", "--title", "春晓", "--form", "五言绝句", "--rhyme-group", "九天"], ["九天"], ("run",)),
    Case("generate:empty-titles-file", ["generate", "run", "--titles-file", "titles.txt"], ["titles.txt", "empty"], ("run", "empty-titles")),
    Case("generate:titles-file-is-a-folder", ["generate", "run", "--titles-file", "run"], ["run is a folder"], ("run",)),
    Case("generate:out-is-a-folder", ["generate", "run", "--title", "春晓", "--out", "run"], ["never overwritten"], ("run",)),
    Case("generate:out-read-only", ["generate", "run", "--title", "春晓", "--out", "ro/poems.jsonl"], ["ro"], ("run", "ro"), root=True),
    Case("generate:model-folder-empty", ["generate", "--model", "./empty", "--title", "春晓"], ["it is empty"], ("empty",), issue=True),
    Case("generate:model-offline", ["generate", "--model", "Qwen/Qwen3-0.6B", "--title", "春晓"], ["Qwen/Qwen3-0.6B", "Fix"], env={"HF_HUB_OFFLINE": "1"}),
    Case("generate:base-and-model", ["generate", "run", "--base", "--model", "x", "--title", "春"], ["--model"], ("run",)),
    # --- score, report ---------------------------------------------------------------------------
    Case("score:a-folder", ["score", "run"], ["run"], ("run",)),
    Case("score:csv", ["score", "poems.csv"], ["poems.csv"], ("csv",)),
    Case("score:rows-without-content", ["score", "texts.jsonl"], ["content"], ("texts",)),
    Case("score:missing-reference", ["score", "poems.jsonl", "--reference", "nope.parquet"], ["nope.parquet"], ("poems",)),
    Case("report:unfinished-run", ["report", "div"], ["holds no finished run"], ("diverged",)),
    Case("report:damaged-config", ["report", "run"], ["is damaged"], ("damaged",), issue=True),
    Case("report:not-a-run", ["report", "."], ["not a poetry_sft run"], ("poems",)),
    Case("report:written-before", ["report", "run"], ["never overwritten"], ("run", "report")),
    # --- merge, export, push ---------------------------------------------------------------------
    Case("merge:unfinished-run", ["merge", "div"], ["holds no finished run"], ("diverged",)),
    Case("merge:damaged-config", ["merge", "run"], ["is damaged"], ("damaged",)),
    Case("merge:out-is-a-file", ["merge", "run", "--out", "notes.txt"], ["notes.txt"], ("run", "notes")),
    Case("merge:disk-full", ["merge", "run", "--out", "disk/merged"], ["the disk is full"], ("run", "disk-full"), root=True),
    Case("merge:read-only", ["merge", "run", "--out", "ro/merged"], ["ro/merged"], ("run", "ro"), root=True),
    Case("export:damaged-config", ["export", "run"], ["is damaged"], ("damaged",), issue=True),
    Case("export:unfinished-run", ["export", "div"], ["holds no finished run"], ("diverged",)),
    Case("export:unknown-quant", ["export", "bpe", "--quant", "q4"], ["q4", "q8_0"], ("bpe",)),
    Case("export:k-quant", ["export", "bpe", "--quant", "Q4_K_M"], ["llama-quantize"], ("bpe",)),
    Case("export:disk-full", ["export", "bpe", "--out", "disk/gguf"], ["free some disk space"], ("bpe", "disk-full"), root=True, issue=True),
    Case("export:read-only", ["export", "bpe", "--out", "ro/gguf"], ["ro/gguf"], ("bpe", "ro"), root=True),
    Case("export:a-character-vocabulary", ["export", "run"], ["WordLevel"], ("run",)),
    Case("push:transformers-offline", ["push", "run", "--repo", "me/poet"], ["TRANSFORMERS_OFFLINE"], ("run",), env={**OFFLINE_PUSH, "TRANSFORMERS_OFFLINE": "1"}, issue=True),
    Case("push:no-network", ["push", "run", "--repo", "me/poet"], ["could not reach"], ("run",), env={**OFFLINE_PUSH, "HF_ENDPOINT": "http://127.0.0.1:9"}, issue=True),
    Case("push:repo-without-owner", ["push", "run", "--repo", "poet"], ["--repo 'poet'", "me/poet"], ("run",)),
    Case("push:what-unknown", ["push", "run", "--repo", "me/poet", "--what", "model"], ["--what", "adapter"], ("run",)),
    Case("push:merged-of-a-full-run", ["push", "full", "--repo", "me/poet", "--what", "merged"], ["HF_HUB_OFFLINE"], ("full",), env={"HF_HUB_OFFLINE": "1"}, issue=True),
    Case("push:gguf-never-exported", ["push", "run", "--repo", "me/poet", "--what", "gguf"], ["poetry-sft export"], ("run",)),
    Case("push:unfinished-run", ["push", "div", "--repo", "me/poet"], ["holds no finished run"], ("diverged",)),
    # --- studio ----------------------------------------------------------------------------------
    Case("studio:port-out-of-range", ["studio", "--runs", ".", "--port", "99999"], ["--port 99999"], issue=True),
    Case("studio:port-in-use", ["studio", "--runs", ".", "--port", "{port}"], ["in use"], ("port",), issue=True),
    Case("studio:host-unknown", ["studio", "--runs", ".", "--host", "no-such-host.invalid"], ["--host"]),
    Case("studio:runs-is-a-file", ["studio", "--runs", "poems.jsonl"], ["poems.jsonl"], ("poems",)),
    Case("studio:cache-size-zero", ["studio", "--runs", ".", "--cache-size", "0"], ["--cache-size"]),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The user's folder of each case


class Fixtures:
    """Runs every case may need, trained once per invocation (with the checkout under test)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.built: dict[str, Path] = {}

    def poems(self, folder: Path) -> Path:
        path = folder / "poems.jsonl"
        rows = [{**p, "author": "李白"} for p in QUATRAINS] * 8
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    def run(self, name: str, *overrides: str) -> Path:
        if name not in self.built:
            self.poems(self.root)
            # a checkpoint at step 2 too, so that a copy without model/ is an interrupted run
            command = [
                sys.executable,
                "-m",
                "poetry_sft",
                *tiny("train.save_steps=2", *overrides),
                f"run_dir={name}",
            ]
            result = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"fixture {name} failed:\n{result.stderr[-3000:]}")
            self.built[name] = self.root / name
        return self.built[name]


@contextlib.contextmanager
def _mount(where: Path, *options: str) -> Iterator[None]:
    subprocess.run(["mount", *options, str(where)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def prepared(case: Case, folder: Path, fx: Fixtures) -> Iterator[dict[str, str]]:
    """The case's folder as the user has it; yields values for the argv's {placeholders}."""
    values: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for item in case.setup:
            if item == "poems":
                fx.poems(folder)
            elif item in ("run", "full", "bpe", "damaged", "report"):
                source = {
                    "run": lambda: fx.run("run"),
                    "report": lambda: fx.run("run"),
                    "damaged": lambda: fx.run("run"),
                    "full": lambda: fx.run("full", "method=full"),
                    "bpe": lambda: fx.run("bpe", *BPE),
                }[item]()
                target = folder / ("run" if item in ("damaged", "report") else item)
                if not target.exists():
                    shutil.copytree(source, target)
                if item == "damaged":
                    config = target / "config.yaml"
                    config.write_text(config.read_text(encoding="utf-8")[:200], encoding="utf-8")
                if item == "report":
                    (target / "eval_report.json").write_text("{}")
            elif item == "diverged":  # an unfinished run (interrupted, diverged): checkpoints, no model/
                shutil.copytree(fx.run("run"), folder / "div")
                for name in ("metrics.json", "log_history.json", "README.md", "model"):
                    path = folder / "div" / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            elif item == "empty":
                (folder / "empty").mkdir()
            elif item == "mine":
                (folder / "mine").mkdir()
                (folder / "mine" / "notes.txt").write_text("my notes\n", encoding="utf-8")
            elif item == "notes":
                (folder / "notes.txt").write_text("my notes\n", encoding="utf-8")
            elif item in ("lists", "numbers", "punct", "texts", "csv"):
                rows = [{**p, "author": "李白"} for p in QUATRAINS] * 8
                name = {"lists": "lists.jsonl", "numbers": "numbers.jsonl", "punct": "punct.jsonl"}.get(item)
                if item == "lists":
                    rows = [{**r, "content": r["content"].split("\n")} for r in rows]
                elif item == "numbers":
                    rows = [{**r, "title": i} for i, r in enumerate(rows)]
                elif item == "punct":
                    rows[0] = {
                        **rows[0],
                        "title": "，。",
                        "content": "千山鸟飞绝，万径人踪灭。\n孤舟蓑笠翁，独钓寒江雪。",
                    }
                    rows[1] = {
                        **rows[1],
                        "title": "……",
                        "content": "松下问童子，言师采药去。\n只在此山中，云深不知处。",
                    }
                elif item == "texts":
                    name, rows = "texts.jsonl", [{"text": r["content"]} for r in rows]
                if item == "csv":
                    (folder / "poems.csv").write_text("title,content\n静夜思,床前明月光\n", encoding="utf-8")
                else:
                    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                    (folder / (name or "x")).write_text(text, encoding="utf-8")
            elif item == "empty-titles":
                (folder / "titles.txt").write_text("", encoding="utf-8")
            elif item == "stale-lock":
                (folder / "stale").mkdir()
                dead = subprocess.Popen([sys.executable, "-c", "pass"])
                dead.wait()
                lock = {"pid": dead.pid, "hostname": socket.gethostname(), "started": "2026-12-01T10:00:00"}
                (folder / "stale" / ".poetry_sft.lock").write_text(json.dumps(lock))
            elif item == "port":
                listener = stack.enter_context(socket.socket())
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                values["port"] = str(listener.getsockname()[1])
            elif item in ("ro", "ro-run", "ro-sweep"):
                ro = folder / "ro"
                ro.mkdir()
                if item == "ro-run":
                    (ro / "config.yaml").write_text("model: {}\nmethod: {}\nhardware: {}\ndata: {}\n")
                if item == "ro-sweep":  # a finished job of a sweep copied from a read-only share
                    job = ro / "method.r=8"
                    (job / ".hydra").mkdir(parents=True)
                    (job / ".hydra" / "overrides.yaml").write_text("- method.r=8\n")
                    (job / "metrics.json").write_text('{"eval_loss": 2.0, "global_step": 2}')
                stack.enter_context(_mount(ro, "--bind", str(ro)))
                subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
            elif item in ("disk-full", "disk-small"):  # a 64 KiB tmpfs filled up; a 180 KiB one left empty
                disk = folder / ("disk" if item == "disk-full" else "small")
                disk.mkdir()
                size = "64k" if item == "disk-full" else "180k"
                stack.enter_context(_mount(disk, "-t", "tmpfs", "-o", f"size={size}", "tmpfs"))
                if item == "disk-full":
                    with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
                        filler.write(b"\0" * 2**20)
            else:
                raise ValueError(item)
        yield values


# ---------------------------------------------------------------------------------------------
# Running and grading


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _changed(before: dict[str, str], after: dict[str, str], writes: bool) -> list[str]:
    lost = [name for name, digest in before.items() if after.get(name) != digest]
    added = [] if writes else sorted(set(after) - set(before))
    return lost + added


def _message(stderr: str) -> str:
    """Our error paragraph (or argparse's, from its usage line), to the end of stderr."""
    lines = stderr.rstrip().splitlines()
    ours = [i for i, line in enumerate(lines) if line.startswith("poetry_sft: ")]
    if ours:
        return "\n".join(lines[ours[-1] :])
    usage = [i for i, line in enumerate(lines) if line.startswith("usage: ")]
    if usage and lines[-1].split(": error: ")[0].startswith("poetry-sft"):
        return "\n".join(lines[usage[-1] :])
    return ""


def grade(
    case: Case, rc: int | None, stdout: str, stderr: str, changed: list[str], folder: Path
) -> tuple[str, str]:
    message = _message(stderr)
    summary = " ".join(message.replace("poetry_sft: error: ", "").split())[:150]
    if rc is None:
        return "BAD", f"hangs (still running after {case.timeout} s)"
    if "Traceback (most recent call last)" in stderr + stdout:
        last = [line for line in stderr.splitlines() if line.strip()][-1:] or [""]
        return "BAD", f"traceback: {last[0][:140]}"
    if case.exit in (2, 1) and rc == 0:
        return "BAD", "exit 0: " + (" ".join((stdout + stderr).split()[-16:])[:140] or "accepted")
    if changed:
        return "BAD", f"the user's files changed: {', '.join(changed[:3])}"
    if case.check and (problem := case.check(folder)):
        return "BAD", problem
    if case.exit in (0, 130) and rc == case.exit:
        return "GOOD", summary if case.exit == 130 else "works"
    if case.exit == 0:
        return "OK", f"refused (exit {rc}): {summary}"
    problems = []
    if rc != case.exit:
        problems.append(f"exit {rc}")
    if not message:
        problems.append("not our message")
    else:
        if "\n\n" in message.strip():
            problems.append("more than one paragraph")
        if "Fix" not in message and not message.startswith("usage: "):
            problems.append("no fix")
        if missing := [w for w in case.words if w not in message]:
            problems.append(f"does not say {missing}")
    if problems:
        return "OK", f"{'; '.join(problems)}: {summary}"
    return "GOOD", summary


def run_case(case: Case, fx: Fixtures, env: dict[str, str], scratch: Path) -> dict[str, str]:
    if case.root and os.geteuid() != 0:
        return {"grade": "n/a", "note": "needs root to mount a tmpfs / read-only folder"}
    folder = Path(tempfile.mkdtemp(prefix=case.id.replace(":", "_") + "_", dir=scratch))
    try:
        return _run_in(case, folder, fx, env)
    except Exception as err:  # the case's setup failed: say so, and go on with the others
        return {
            "grade": "n/a",
            "note": f"setup failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}",
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_in(case: Case, folder: Path, fx: Fixtures, env: dict[str, str]) -> dict[str, str]:
    with prepared(case, folder, fx) as values:
        before = _snapshot(folder)
        argv = [a.format(**values) if "{" in a else a for a in case.argv]
        command = [sys.executable, "-m", "poetry_sft", *argv]
        with subprocess.Popen(
            command,
            cwd=folder,
            env={**env, **case.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        ) as process:
            try:
                if case.interrupt_after:
                    time.sleep(case.interrupt_after)
                    process.send_signal(signal.SIGINT)
                stdout, stderr = process.communicate(timeout=case.timeout)
                rc: int | None = process.returncode
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                rc = None
        changed = [c for c in _changed(before, _snapshot(folder), case.writes) if c not in case.replaces]
        result, note = grade(case, rc, stdout, stderr, changed, folder)
    return {"grade": result, "note": note, "exit": "" if rc is None else str(rc)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bad_inputs", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the checkout whose package runs (default: this one)")
    parser.add_argument("--only", default="", help="comma-separated id prefixes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="render two results")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table[0].read_text()), json.loads(args.table[1].read_text())))
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if args.source:
        env["PYTHONPATH"] = str(args.source.resolve())
    prefixes = tuple(p for p in args.only.split(",") if p)
    cases = [c for c in CASES if not prefixes or c.id.startswith(prefixes)]
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as scratch:
        fixtures_root = Path(scratch) / "fixtures"
        fixtures_root.mkdir()
        env["POETRY_SFT_CACHE"] = str(Path(scratch) / "cache")
        fx = Fixtures(fixtures_root, env)
        for case in cases:
            started = time.perf_counter()
            results[case.id] = run_case(case, fx, env, Path(scratch))
            seconds = time.perf_counter() - started
            print(
                f"{results[case.id]['grade']:5} {case.id:40} {seconds:5.1f}s  {results[case.id]['note']}",
                flush=True,
            )
    counts = {g: sum(r["grade"] == g for r in results.values()) for g in ("GOOD", "OK", "BAD", "n/a")}
    print("\n" + ", ".join(f"{n} {g}" for g, n in counts.items()))
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


def table(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> str:
    """The markdown table of docs/bad_inputs.md: case, command, before, after, grade."""
    lines = ["| case | command | before | after | grade |", "|---|---|---|---|---|"]
    for case in CASES:
        b, a = before.get(case.id), after.get(case.id)
        if not (b and a):
            continue
        own = [a for a in case.argv if a not in TINY]  # the tiny run's overrides are every train case's
        shown = ("<tiny run> " if len(own) < len(case.argv) else "") + " ".join(own)
        shown = shown.replace("|", "\\|")
        cell = lambda r: f"{r['grade']}: {r['note']}".replace("|", "\\|")  # noqa: E731
        mark = " (#19)" if case.issue else ""
        lines.append(
            f"| {case.id}{mark} | `poetry-sft {shown}` | {cell(b)} | {cell(a)} | {b['grade']} → {a['grade']} |"
        )
    for name, results in (("before", before), ("after", after)):
        counts = {g: sum(r["grade"] == g for r in results.values()) for g in ("GOOD", "OK", "BAD", "n/a")}
        lines.append(f"\n{name}: " + ", ".join(f"{n} {g}" for g, n in counts.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
