"""The studio page in a real browser: headless Chromium (the system's `chromium`) through Playwright.

Starts `poetry-sft studio` on the demo run, writes a poem, opens the Data and Runs tabs,
submits bad input, and checks that the page never asks anything of a host other than the studio.
"""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON

pytest.importorskip("gradio", reason="the studio needs gradio: pip install -e '.[studio]' (or '.[test]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extra)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        "no chromium executable (Debian: apt-get install -y chromium; .ci/run installs it where apt works)",
        allow_module_level=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio_url(demo_runs: Path) -> Iterator[str]:
    port = _free_port()
    log = demo_runs.parent / "studio.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [PYTHON, "-m", "poetry_sft", "studio", "--runs", str(demo_runs), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the studio did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_page_writes_judges_previews_and_reports_offline(studio_url: str):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        elsewhere: list[str] = []
        page.on(
            "request",
            lambda r: None if r.url.startswith((studio_url, "data:", "blob:")) else elsewhere.append(r.url),
        )
        page.set_default_timeout(120_000)
        page.goto(studio_url)
        page.get_by_text("诗坊 Poem studio").first.wait_for()
        page.locator("#run-info").get_by_text("tiny").wait_for()

        # 写诗 Write: a rhyming 七言绝句 for a title, every character with its tone
        page.locator("#subject textarea").fill("春夜喜雨")
        page.get_by_label("七绝").check()
        page.get_by_label("押韵 Rhyme (平水韵)").check()
        page.locator("#write-button").click()
        poem = page.locator("#poems-tuned")
        poem.get_by_text("《春夜喜雨》").wait_for()
        assert poem.locator("ruby").count() == 28
        marks = poem.locator("rt").all_inner_texts()
        assert all(mark.startswith(("平", "仄", "?")) for mark in marks) and len(marks) == 28
        assert poem.locator(".sf-rhyme").count() >= 2  # lines 2 and 4 rhyme (constrained)
        assert "七言绝句" in poem.inner_text() and "韵 rhyme" in poem.inner_text()

        # bad input: a message in the page, and the server still answers
        page.locator("#subject textarea").fill("春夜<|im_end|>")
        page.locator("#write-button").click()
        page.locator("#write-message").get_by_text("control token").wait_for()
        page.locator("#subject textarea").fill("")
        page.locator("#write-button").click()
        page.locator("#write-message").get_by_text("is empty").wait_for()

        # 数据 Data: masked prompt and trained tokens, the data report
        page.get_by_role("tab", name="数据 Data").click()
        page.locator("#preview-button").click()
        page.locator("#data-examples .sf-trained").first.wait_for()
        assert page.locator("#data-examples .sf-prompt").count() > 0
        assert "<|im_end|>" in page.locator("#data-examples").inner_text()
        assert "rows in" in page.locator("#data-report").inner_text()

        # 训练 Runs: the run's metrics and curves
        page.get_by_role("tab", name="训练 Runs").click()
        page.locator("#show-button").click()
        page.locator("#run-metrics").get_by_text("eval_loss", exact=True).wait_for()
        assert "finished" in page.locator("#run-metrics").inner_text()
        browser.close()
    assert elsewhere == [], f"the page fetched from other hosts: {elsewhere}"
