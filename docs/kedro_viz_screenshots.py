"""The docs' kedro viz screenshots, taken in headless Chromium.

Starts ``kedro viz run`` on the project (its base configuration), opens it with Playwright
(installed with the project's test dependencies) and writes
docs/images/kedro_viz_{default,default_group,study}.png. Needs a Chromium (``make test``
installs Debian's). Run from the project's root:

    .venv/bin/python docs/kedro_viz_screenshots.py [--chromium /usr/bin/chromium] [--kedro K]

A conf/local that changes the lists changes the pictures: take them from a clean clone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from attn_pipeline.pipelines import STUDY_PIPELINE

PROJECT = Path(__file__).resolve().parents[1]
KEDRO = PROJECT / ".venv" / "bin" / "kedro"
PORT = 4199


def wait_until_serving(url: str, what: str, seconds: float = 180) -> None:
    """Return once ``url`` answers; stop the script naming ``what`` if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise SystemExit(f"{what} did not answer at {url} within {seconds} s")


def _open(page: Page, url: str, pipeline: str, *, datasets: bool = True) -> None:
    """kedro viz on ``pipeline``, light theme, no feature hints; datasets hidden on request
    (kedro viz keeps these settings in the browser's localStorage under ``KedroViz``)."""
    settings = {
        "showFeatureHints": False,
        "theme": "light",
        "pipeline": {"active": pipeline},
        "nodeType": {"disabled": {"parameters": True, "task": False, "data": not datasets}},
    }
    page.add_init_script(
        f"localStorage.setItem('KedroViz', JSON.stringify({json.dumps(settings)}))"
    )
    page.goto(url)
    page.wait_for_load_state("networkidle")
    time.sleep(4)
    banner = page.get_by_text("Dismiss", exact=True)
    if banner.count():
        banner.first.click()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--kedro", default=str(KEDRO), help="the project's kedro command")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{PORT}/"
    images = PROJECT / "docs" / "images"
    viz = subprocess.Popen(
        [args.kedro, "viz", "run", "--no-browser", "--port", str(PORT)],
        cwd=PROJECT,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(url, "kedro viz")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, args=["--no-sandbox"]
            )
            shots = [
                ("kedro_viz_default.png", "__default__", True, None),
                ("kedro_viz_default_group.png", "__default__", True, "spatial_gate"),
                ("kedro_viz_study.png", STUDY_PIPELINE, False, None),
            ]
            for name, pipeline, datasets, group in shots:
                page = browser.new_page(
                    viewport={"width": 1600, "height": 1000}, device_scale_factor=0.75
                )
                _open(page, url, pipeline, datasets=datasets)
                if group is not None:  # a collapsed group opens on a click
                    page.locator("g.pipeline-node--modularPipeline", has_text=group).first.click()
                    time.sleep(3)
                page.mouse.move(5, 500)  # no hover highlight
                page.screenshot(path=images / name)
                page.close()
                print(images / name)
            browser.close()
    finally:
        viz.terminate()
        viz.wait()


if __name__ == "__main__":
    main()
