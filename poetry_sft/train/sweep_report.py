"""One table of a sweep: every job's overrides and metrics, failures with their error, and a plot.

    poetry-sft sweep-report multirun/<sweep>     # -> summary.csv, summary.md, summary.png

Rebuilt from the job directories alone (.hydra/overrides.yaml, metrics.json, error.json), so it
works for any sweep directory, finished, interrupted or still running. A multirun writes it
automatically when it ends (SummaryCallback, conf/config.yaml).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from poetry_sft.errors import RunDirError, command, write_failure
from poetry_sft.run import artifacts
from poetry_sft.train.sweep import METRIC, remember_swept_keys

log = logging.getLogger("poetry_sft")

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
# metrics.json keys shown in the table, in this order (others stay in metrics.json)
METRIC_COLUMNS = (
    "eval_loss",
    "train_loss",
    "global_step",
    "train_runtime_s",
    "tokens_per_s",
    "peak_gpu_allocated_gib",
    "peak_cpu_rss_gib",
)


@dataclass
class Job:
    name: str
    status: str  # finished | failed | unfinished (running, or interrupted: a re-run of the sweep resumes it)
    overrides: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory of a sweep (one holding .hydra/overrides.yaml)."""
    jobs = []
    for overrides_file in sorted(sweep_dir.glob(f"*/{OVERRIDES_FILE.as_posix()}")):
        job_dir = overrides_file.parent.parent
        overrides = dict(_split(str(line)) for line in OmegaConf.load(overrides_file))
        if artifacts.is_finished(job_dir):
            metrics = json.loads((job_dir / artifacts.METRICS_FILE).read_text(encoding="utf-8"))
            jobs.append(Job(job_dir.name, "finished", overrides, metrics))
        elif (job_dir / artifacts.ERROR_FILE).is_file():
            error = json.loads((job_dir / artifacts.ERROR_FILE).read_text(encoding="utf-8"))
            jobs.append(Job(job_dir.name, "failed", overrides, error=str(error.get("error", "")).strip()))
        else:
            jobs.append(Job(job_dir.name, "unfinished", overrides))
    return jobs


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (all of them for a single job)."""
    keys = sorted({k for job in jobs for k in job.overrides})
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def write_summary(sweep_dir: Path, metric: str = METRIC) -> dict[str, Path]:
    """summary.csv, summary.md and (with matplotlib) summary.png in `sweep_dir`; returns their paths."""
    jobs = read_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no sweep jobs (no */{OVERRIDES_FILE.as_posix()})")
    jobs.sort(key=lambda job: (job.status != "finished", _number(job.metrics.get(metric)), job.name))
    keys, swept = sorted({k for job in jobs for k in job.overrides}), swept_keys(jobs)
    metric_columns = [metric, *(c for c in METRIC_COLUMNS if c != metric)]
    written = {"csv": sweep_dir / "summary.csv", "md": sweep_dir / "summary.md"}

    with written["csv"].open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", "status", *keys, *metric_columns, "error"])
        for job in jobs:
            writer.writerow(
                [job.name, job.status, *(job.overrides.get(k, "") for k in keys)]
                + [job.metrics.get(c, "") for c in metric_columns]
                + [job.error]
            )

    common = [f"{k}={jobs[0].overrides[k]}" for k in keys if k not in swept and k in jobs[0].overrides]
    shown = [metric, "train_loss", "global_step", "train_runtime_s"] if metric != "train_loss" else [metric]
    header = ["job", "status", *swept, *dict.fromkeys(shown), "error"]
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{sum(j.status == 'finished' for j in jobs)} finished, {sum(j.status == 'failed' for j in jobs)} "
        f"failed, {sum(j.status == 'unfinished' for j in jobs)} unfinished; best first by {metric}.",
        f"Common overrides: {', '.join(f'`{c}`' for c in common) or 'none'}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for job in jobs:
        cells = [job.name, job.status, *(job.overrides.get(k, "") for k in swept)]
        cells += [_fmt(job.metrics.get(c)) for c in dict.fromkeys(shown)]
        cells.append(" ".join(job.error.split())[:300])
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    written["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")

    png = _plot(jobs, swept, metric, sweep_dir / "summary.png")
    if png:
        written["png"] = png
    return written


def _plot(jobs: list[Job], swept: list[str], metric: str, path: Path) -> Path | None:
    """The metric against each swept value, one panel per swept key."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: works without a display, over SSH, in CI
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'poetry-sft[sweep]'): no %s", path.name)
        return None
    done = [j for j in jobs if j.status == "finished" and math.isfinite(_number(j.metrics.get(metric)))]
    panels = swept or ["job"]
    size = (4.5 * len(panels), 3.6)
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], panels, strict=True):
        values = [j.overrides.get(key, "") if key != "job" else j.name for j in done]
        ys = [_number(j.metrics[metric]) for j in done]
        numbers = [_number(v) for v in values]
        if values and all(math.isfinite(x) for x in numbers):
            ax.scatter(numbers, ys)
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
                ax.set_xscale("log")  # learning rates and the like span decades
        else:
            categories = sorted(set(values))
            ax.scatter([categories.index(v) for v in values], ys)
            labels = [c if len(c) <= 24 else "…" + c[-23:] for c in categories]  # a data path's tail
            ax.set_xticks(range(len(categories)), labels, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    failed = sum(j.status != "finished" for j in jobs)
    fig.suptitle(
        f"{len(done)} finished jobs" + (f", {failed} failed or unfinished (not shown)" if failed else "")
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf  # sorts last, never plotted


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


class SummaryCallback(Callback):
    """Writes the summary when a multirun ends (also after failed jobs: they are rows in it), and records
    which jobs failed in this sweep, so the command exits non-zero (sweep_failure)."""

    started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        remember_swept_keys(config)
        _last_sweep.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = write_summary(sweep_dir)
        except Exception as err:  # a report problem must never hide the sweep's own outcome
            log.warning("could not write the sweep summary: %s", err)
        else:
            log.info("sweep summary: %s", ", ".join(str(p) for p in written.values()))
        jobs = read_jobs(sweep_dir) if sweep_dir.is_dir() else []
        # Failed in this sweep (error.json written since it started), not left over from an earlier one
        failed = [
            job
            for job in jobs
            if job.status == "failed"
            and (sweep_dir / job.name / artifacts.ERROR_FILE).stat().st_mtime >= self.started - 2
        ]
        _last_sweep.update(sweep_dir=sweep_dir, jobs=len(jobs), failed=failed)


_last_sweep: dict[str, Any] = {}


def sweep_failure() -> str | None:
    """Why the multirun that just ended should exit non-zero (some jobs failed), or None."""
    failed: list[Job] = _last_sweep.get("failed", [])
    if not failed:
        return None
    sweep_dir = _last_sweep["sweep_dir"]
    names = ", ".join(job.name for job in failed[:3]) + (" ..." if len(failed) > 3 else "")
    first = " ".join(failed[0].error.split())[:300]
    return (
        f"{len(failed)} of {_last_sweep['jobs']} sweep jobs failed ({names}; the first: {first}). Every "
        f"job's status is in {sweep_dir / 'summary.md'}, each failure's error and log tail in <job>/"
        f"{artifacts.ERROR_FILE}.\n  Fix: correct what failed and run the same command again (same "
        "hydra.sweep.dir): finished jobs are skipped, failed ones retried."
    )


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poetry-sft sweep-report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun directory (multirun/<time> or hydra.sweep.dir)"
    )
    parser.add_argument(
        "--metric", default=METRIC, help=f"metrics.json key to rank and plot (default {METRIC})"
    )
    args = parser.parse_args(argv)
    try:
        written = write_summary(args.sweep_dir, args.metric)
    except FileNotFoundError as err:
        raise RunDirError(
            f"{err}\n  Fix: give a multirun directory (multirun/<time>) that holds jobs"
        ) from err
    except OSError as err:  # a read-only copy of a sweep, a full disk: the summary files cannot be written
        if failure := write_failure(args.sweep_dir, err, "the summary", "a copy of the sweep folder"):
            raise failure from err
        raise
    print(written["md"].read_text(encoding="utf-8"))
    print("written:", ", ".join(str(p) for p in written.values()))
    return 0
