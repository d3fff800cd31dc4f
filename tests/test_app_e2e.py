"""End to end: `python app.py` in a real process, driven by headless Chromium through Playwright.

Upload the example clip, run a comparison, see the metrics table and the images; run a rate-distortion sweep;
cast a blind vote and see it counted; restart the app and see the vote still there. Screenshots of each tab go to
$DIFFVC_SCREENSHOTS (docs/screenshots for the README) or the test's temporary folder.

Needs Debian's `chromium` (/usr/bin/chromium, installed by `make test`); Playwright's own browser download cannot
work offline.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import EXAMPLE_CLIP, REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RUN_TIMEOUT_MS = 300_000
FRAMES = os.environ.get("DIFFVC_E2E_FRAMES", "3")  # the docs' screenshots use the app's defaults: 16 frames, 256 px
MAX_SIDE = os.environ.get("DIFFVC_E2E_MAX_SIDE", "96")
PACK = os.environ.get("DIFFVC_E2E_PACK", "random-tiny")  # "" = the embedded pack (the docs' screenshots)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` on a free port with its own data folder."""

    def __init__(self, data: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DIFFVC_STUDIO_PACK": PACK,
            "DIFFVC_STUDIO_DATA": str(data),
            "GRADIO_SERVER_PORT": str(self.port),
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"app.py exited early; see {log}"
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app.py did not serve {self.url}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def set_number(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(value)
    field.press("Enter")


def test_compare_sweep_vote_and_restart(browser, tmp_path):
    shots = Path(os.environ.get("DIFFVC_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server = Server(tmp_path / "data", tmp_path / "server.log")
    outside = []
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        local = (server.url, f"blob:{server.url}", "data:")
        page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
        page.goto(server.url, wait_until="load")
        page.get_by_text("DiffVC model pack").wait_for()
        page.get_by_text("Advanced").click()
        page.locator("#stage-filter").get_by_text("diffusion stage's sharpening, per stream").wait_for()

        # Compare: upload the example clip, a few frames at a small size (fast), run
        page.locator("#clip button[aria-label='Clear']").click()
        page.locator("#clip input[type=file]").set_input_files(str(EXAMPLE_CLIP))
        page.locator("#clip video").wait_for()
        set_number(page, "frames", FRAMES)
        set_number(page, "max-side", MAX_SIDE)
        began = time.monotonic()
        page.locator("#run").click()
        page.locator("#compare-status").get_by_text("Done").wait_for(timeout=RUN_TIMEOUT_MS)
        seconds = time.monotonic() - began  # the default comparison as a user waits for it, click to "Done"
        print(f"\ncomparison in the browser: {seconds:.1f} s ({FRAMES} frames, size cap {MAX_SIDE}, pack {PACK!r})")
        table = page.locator("#metrics-table").inner_text()
        assert "DiffVC (TDIR on)" in table and "DiffVC (TDIR off)" in table and "x265" in table
        assert "stage filter" in table and "as trained" in table  # how strongly each DiffVC stream's stage restored
        for elem_id, count in (("side-by-side", 1), ("wipe", 2), ("zoom", 1), ("heatmap", 1)):
            page.locator(f"#{elem_id} img").nth(count - 1).wait_for()
        page.locator("#next").click()
        page.get_by_text("Frame 1 (P-frame)").wait_for()
        page.screenshot(path=str(shots / "compare.png"), full_page=True)
        page.get_by_role("tab", name="Per-frame charts").click()
        page.locator("#per-frame .js-plotly-plot").wait_for()
        page.locator("#per-frame").screenshot(path=str(shots / "compare-per-frame.png"))
        page.get_by_role("tab", name="Timing").click()
        page.get_by_text("TDIR on against off").wait_for()
        page.screenshot(path=str(shots / "compare-timing.png"), full_page=True)

        # Rate-distortion: x265 and x264 over the default anchor QPs, BD-rate of x264 against x265
        page.get_by_role("tab", name="Rate-distortion").click()
        page.locator("#rd-filter").get_by_text("diffusion stage's sharpening, per stream").wait_for()
        page.locator("#rd-codecs label").filter(has_text="diffvc").locator("input").uncheck()
        page.locator("#rd-codecs label").filter(has_text="x264").locator("input").check()
        page.locator("#rd-run").click()
        page.locator("#rd-status").get_by_text("Done").wait_for(timeout=RUN_TIMEOUT_MS)
        assert "x264" in page.locator("#bd-table").inner_text()
        page.locator("#rd-plot .js-plotly-plot").wait_for()
        page.screenshot(path=str(shots / "rate-distortion.png"), full_page=True)

        # Blind test: a pair with the names hidden, a vote, the names revealed and counted
        page.get_by_role("tab", name="Blind test").click()
        page.locator("#rater input, #rater textarea").first.fill("e2e")
        page.locator("#show-reference input").check()
        page.locator("#new-pair").click()
        page.locator("#image-a img").wait_for()
        page.locator("#image-b img").wait_for()
        before_vote = page.locator("body").inner_text()
        assert "DiffVC (TDIR" not in before_vote.split("Blind test", 1)[-1].split("Results of every vote")[0]
        page.screenshot(path=str(shots / "blind-test.png"), full_page=True)
        page.locator("#vote-a").click()
        page.locator("#blind-status").get_by_text("counted").wait_for()
        assert "A was" in page.locator("#blind-status").inner_text()
        results = page.locator("#blind-results").inner_text().splitlines()
        pairs = [line for line in results if " vs " in line and not line.startswith("pair (")]
        assert len(pairs) == 1 and "DiffVC" in pairs[0], pairs  # the pair voted on (which depends on the pack)
        page.screenshot(path=str(shots / "blind-test-voted.png"), full_page=True)
    finally:
        server.stop()
    assert not outside, f"the page reached outside the app: {outside[:5]}"

    # the vote survives a restart of the app
    server = Server(tmp_path / "data", tmp_path / "server.log")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url, wait_until="load")
        page.get_by_role("tab", name="Blind test").click()
        page.wait_for_function(f"document.querySelector('#blind-results').innerText.includes({json.dumps(pairs[0])})")
        page.get_by_role("tab", name="Codecs").click()
        page.get_by_text("HEVC through libx265").wait_for()
        page.screenshot(path=str(shots / "codecs.png"), full_page=True)
    finally:
        server.stop()
