"""How long the studio takes to start: from launching the process to the first page served.

    python bench/bench_studio.py --runs runs/        # a folder with your runs
    python bench/bench_studio.py                     # trains a 10-step demo run into a temp folder first

Each repeat is a fresh `poetry-sft studio` process (imports, page build, server start); the
model is loaded later, on the first poem, so it is not part of the start time.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_seconds(runs: Path) -> tuple[float, float]:
    """(wall seconds to the first page, CPU seconds the server process used by then)."""
    port = _free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "poetry_sft", "studio", "--runs", str(runs), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                wall = time.perf_counter() - started
                return wall, _cpu_seconds(server.pid)
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("the studio exited before serving the page") from None
                time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    """user + system time of a running process (Linux /proc); on a busy machine wall time includes
    waiting for a core, CPU time does not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, help="runs folder (default: a 10-step demo run in a temp folder)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-studio-") as folder:
        runs = args.runs
        if runs is None:
            runs = Path(folder)
            overrides = [
                "recipe=demo",
                "train.max_steps=10",
                "generation.report=false",
                "generation.showcase=false",
                "sample_titles=[]",
            ]
            subprocess.run(
                [sys.executable, "-m", "poetry_sft", *overrides, f"run_dir={runs / 'demo'}"],
                check=True,
                capture_output=True,
            )
        results = [start_seconds(runs) for _ in range(args.repeats)]
    walls, cpus = [w for w, _ in results], [c for _, c in results]
    print(
        f"studio start (launch -> first page), {args.repeats} runs: " + ", ".join(f"{w:.1f}" for w in walls)
    )
    print(
        f"median {statistics.median(walls):.1f} s wall, {statistics.median(cpus):.1f} s CPU of the server "
        f"process; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
