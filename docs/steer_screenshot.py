"""The docs' screenshot of attn-steer: the page for a model, its samples moved into the top
left quadrant, taken in headless Chromium (Debian's ``chromium``) with Playwright.

    .venv/bin/python docs/steer_screenshot.py --model data/06_models/translated_mnist/where/model.pt
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

OUT = Path(__file__).with_name("images") / "steer_page.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="models:/... or a checkpoint file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    attn_steer = str(Path(sys.executable).with_name("attn-steer"))
    server = subprocess.Popen([attn_steer, "--model", args.model, "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)  # noqa: S310 (loopback)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1180, "height": 900})
            page.goto(url)
            page.wait_for_function("document.getElementById('description').textContent")
            page.fill("#seed", str(args.seed))
            pad = page.locator("#pad").bounding_box()
            page.mouse.move(pad["x"] + 4, pad["y"] + 4)
            page.mouse.down()
            page.mouse.move(pad["x"] + 138, pad["y"] + 138, steps=5)
            page.mouse.up()
            page.click("#steer")
            page.wait_for_function("document.getElementById('result').src")
            page.wait_for_timeout(500)
            page.screenshot(path=str(OUT), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {OUT}")  # noqa: T201


if __name__ == "__main__":
    main()
