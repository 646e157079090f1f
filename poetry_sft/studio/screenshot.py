"""A screenshot of the studio writing a poem: python -m poetry_sft.studio.screenshot --out docs/studio.png

Without --runs it first trains the offline demo (`poetry-sft train recipe=demo`, a few minutes
on CPU) into a temporary folder. Needs the system Chromium and Playwright (`.[test]`); for Chinese
glyphs the machine needs a CJK font (Debian: fonts-noto-cjk).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from poetry_sft.errors import ConfigError, command
from poetry_sft.studio.logic import FORM_CHOICES

MAX_BYTES = 300_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_run(folder: Path) -> None:
    overrides = [
        "recipe=demo",
        "generation.report=false",
        "generation.showcase=false",
        "sample_titles=[]",
        f"run_dir={folder / 'demo'}",
    ]
    subprocess.run([sys.executable, "-m", "poetry_sft", *overrides], check=True)


def _wait(url: str, server: subprocess.Popen, seconds: float = 120) -> float:
    started = time.perf_counter()
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return time.perf_counter() - started
        except OSError:
            if server.poll() is not None or time.perf_counter() - started > seconds:
                raise ConfigError(f"the studio did not start at {url}") from None
            time.sleep(0.2)


def _save_small(png: bytes, out: Path) -> int:
    """The PNG as is if small enough, else with a 256-colour palette (text and marks stay sharp)."""
    if len(png) > MAX_BYTES:
        from PIL import Image

        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        png = buffer.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return len(png)


def shoot(runs: Path, out: Path, title: str, form: str) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        raise ConfigError("no chromium executable: apt-get install -y chromium")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [sys.executable, "-m", "poetry_sft.studio", "--runs", str(runs), "--port", str(port)],
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        print(f"studio answered after {_wait(url, server):.1f} s")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(90_000)
            page.goto(url)
            page.locator("#run-info").get_by_text("·").first.wait_for()
            page.locator("#subject textarea").fill(title)
            page.get_by_label(form).check()
            page.get_by_label("押韵 Rhyme (平水韵)").check()
            page.get_by_label("对比 both").check()  # the fine-tuned model and its base, side by side
            page.locator("#write-button").click()
            page.locator("#poems-base ruby").first.wait_for()
            page.locator("#write-message").get_by_text("✓").wait_for()
            size = _save_small(page.screenshot(full_page=True), out)
            browser.close()
        print(f"wrote {out} ({size / 1000:.0f} KB)")
    finally:
        server.terminate()
        server.wait(timeout=30)


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poetry_sft.studio.screenshot", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/studio.png"))
    parser.add_argument(
        "--runs", type=Path, help="a runs folder (default: train the demo into a temp folder)"
    )
    parser.add_argument("--title", default="春夜喜雨")
    parser.add_argument(
        "--form", default="七绝", choices=[label for label, form in FORM_CHOICES.items() if form]
    )
    args = parser.parse_args(argv)
    if args.runs is not None:
        shoot(args.runs, args.out, args.title, args.form)
        return 0
    with tempfile.TemporaryDirectory(prefix="studio-demo-") as folder:
        _demo_run(Path(folder))
        shoot(Path(folder), args.out, args.title, args.form)
    return 0


if __name__ == "__main__":
    sys.exit(main())
