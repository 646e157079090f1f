"""poetry-sft studio [--runs runs/] [--port 7860]: the 诗坊 Poem studio in the browser.

Binds 127.0.0.1 unless --host says otherwise; --share (a public gradio.live link) only when asked.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import os
import socket
import sys
import time
from pathlib import Path

from poetry_sft.errors import ConfigError, command

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poetry-sft studio", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, default=Path("runs"), help="folder of runs and sweeps (default runs/)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (needs internet)"
    )
    parser.add_argument(
        "--cache-size",
        type=int,
        default=1,
        help="runs whose models (fine-tuned, base) stay loaded (default 1)",
    )
    return parser


def _check_port(host: str, port: int) -> None:
    """A port that cannot be served, said before the page is built (Gradio's own error is a traceback)."""
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"--port {port} is not a port. Fix: give one in 1-65535, e.g. --port 7860 (the default)"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(
            f"--host {host} is not an address of this machine ({err.strerror}). Fix: --host 127.0.0.1 (this "
            "machine only, the default) or --host 0.0.0.0 (every network it is on)"
        ) from err
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if (
            os.name != "nt"
        ):  # as the server binds: a port in TIME_WAIT is free (on Windows this would steal it)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            taken = err.errno == errno.EADDRINUSE
            raise ConfigError(
                f"cannot serve on {host}:{port}: "
                + (
                    "the port is in use (another studio, or another program)"
                    if taken
                    else f"{err.strerror} (ports below 1024 need root)"
                )
                + f". Fix: choose another, --port {port + 1 if port < 65535 else 7860}"
                + (f", or stop what uses it (lsof -i :{port} shows it)" if taken else "")
            ) from err


@command
def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = _parser().parse_args(argv)
    if not args.runs.is_dir():
        raise ConfigError(
            f"--runs {args.runs}: no such folder. Fix: train a run first (poetry-sft train recipe=demo "
            "writes runs/...), or point --runs at the folder that holds your runs"
        )
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("the studio needs Gradio: pip install -e '.[studio]'")
    _check_port(args.host, args.port)
    if args.cache_size < 1:
        raise ConfigError(
            f"--cache-size {args.cache_size} must be at least 1 (the runs whose models stay loaded). Fix: "
            "--cache-size 1, the default"
        )
    if args.host not in LOCAL_HOSTS:
        print(
            f"warning: --host {args.host} serves the studio to other machines, with no login: anyone who can "
            "reach this port can use your models and read your runs' metrics",
            file=sys.stderr,
        )
    if args.share:
        print(
            "warning: --share opens a public gradio.live link to this studio: anyone with the link can use "
            "it",
            file=sys.stderr,
        )
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from poetry_sft.studio.app import CSS, THEME, build
    from poetry_sft.studio.logic import Studio

    page = build(Studio(args.runs, cache_size=args.cache_size))
    page.queue(default_concurrency_limit=8)  # generation itself is serialised by the logic layer's lock
    page.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        theme=THEME,
        css=CSS,
        footer_links=[],
        prevent_thread_lock=True,
        quiet=True,
    )
    print(
        f"诗坊 studio ready in {time.perf_counter() - started:.1f} s: http://{args.host}:{args.port}",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the studio without a traceback
        page.block_thread()
    return 0
