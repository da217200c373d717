"""Screenshots a study's runs in the MLflow UI of a running tracking server: the experiment's
runs table with the newest study run (`study`) that has cells expanded (its cells as child
runs).

Needs Playwright and a Chromium, as docs/kedro_viz_screenshots.py says.

    .venv/bin/python docs/study_cluster_screenshot.py --server http://127.0.0.1:5000 \\
        --out docs/images/study_two_workers_mlflow.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mlflow_ui_walkthrough import open_experiment  # beside this script
from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="the tracking server's URL")
    parser.add_argument("--experiment", default="attn_pipeline_mnist")
    parser.add_argument("--parent", default="study", help="the study's run to expand")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        open_experiment(page, args.server, args.experiment)
        # the newest study run with children (a study whose cells were all reused has none)
        parent = page.locator(
            "[role='row'][row-index]",
            has=page.get_by_role("link", name=args.parent, exact=True),
        ).filter(has=page.locator("button"))
        parent.first.locator("button").first.click()
        time.sleep(4)
        links = page.locator("[role='row'] a").all_text_contents()
        print(f"rows: {links}")
        page.screenshot(path=args.out)
        browser.close()


if __name__ == "__main__":
    main()
