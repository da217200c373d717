"""Replays the docs' MLflow UI walkthrough in headless Chromium and stops at the first
step the UI does not show as written.

Starts ``mlflow ui`` on the project's store the way ``make mlflow-ui`` does (with
``MLFLOW_DISABLE_TELEMETRY=true``), then: Model training mode -> Experiments -> the
experiment (must open on its Runs) -> expand the parent run -> Chart view -> search
``val/loss`` (one chart) -> Model registry (an ``@ champion`` alias). Records every request
the page makes: none may leave 127.0.0.1, and no telemetry record may be posted. Writes a
screenshot per step to --out. Needs Playwright and a Chromium, as
docs/kedro_viz_screenshots.py says; the store needs a finished `kedro run` (a parent run with
children and a registered model).

    .venv/bin/python docs/mlflow_ui_walkthrough.py [--store sqlite:///mlruns/mlflow.db]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from kedro_viz_screenshots import wait_until_serving  # beside this script
from playwright.sync_api import Page, sync_playwright

PROJECT = Path(__file__).resolve().parents[1]
MLFLOW = PROJECT / ".venv" / "bin" / "mlflow"
PORT = 5099


def _step(page: Page, out: Path, number: int, what: str, ok: bool) -> None:
    page.screenshot(path=out / f"step{number}.png")
    print(f"step {number}: {what}: {'as the docs say' if ok else 'NOT as the docs say'}")
    if not ok:
        raise SystemExit(1)


def open_experiment(page: Page, base: str, experiment: str) -> None:
    """From the UI's home page to the experiment's runs, as the docs' walkthrough says."""
    page.goto(base)
    page.wait_for_load_state("load")
    time.sleep(6)
    page.get_by_text("Model training", exact=True).first.click()
    time.sleep(3)
    page.get_by_text("Experiments", exact=True).first.click()
    time.sleep(4)
    page.get_by_text(experiment, exact=True).first.click()
    time.sleep(8)


def walk(page: Page, base: str, experiment: str, parent: str, out: Path) -> None:
    open_experiment(page, base, experiment)
    opened_on_runs = "matching runs" in page.inner_text("body")  # the runs table's footer
    _step(page, out, 1, f"{experiment} opens on its Runs ({page.url})", opened_on_runs)

    parent_row = page.locator("[role='row'][row-index]", has=page.get_by_role("link", name=parent))
    parent_row.first.locator("button").first.click()
    time.sleep(3)
    links = page.locator("[role='row'] a").all_text_contents()
    _step(page, out, 2, f"the + beside {parent} lists its child runs: {links}", len(links) > 2)

    # Chart view: the second of the three view buttons (radio inputs inside labels)
    page.locator("label", has=page.locator("input[type='radio']")).nth(1).click()
    time.sleep(6)
    page.get_by_placeholder("Search metric charts").fill("val/loss")
    time.sleep(4)
    charts = page.get_by_text("val/loss", exact=True).count()
    _step(page, out, 3, "Chart view, val/loss searched: a val/loss chart", charts >= 1)

    children = [name for name in links if name != parent and not name.startswith("attn_pipeline.")]
    page.get_by_placeholder("Search metric charts").fill("")
    page.locator("label", has=page.locator("input[type='radio']")).nth(0).click()  # the table
    time.sleep(4)
    for name in children[:2]:
        row = page.locator("[role='row'][row-index]", has=page.get_by_role("link", name=name))
        row.first.locator("input.ag-checkbox-input").first.click()
        time.sleep(1)
    page.get_by_role("button", name="Compare").first.click()
    time.sleep(8)
    text = page.inner_text("body")
    sections = all(f"\n{name}\n" in text for name in ("Parameters", "Metrics", "Artifacts", "Tags"))
    _step(
        page,
        out,
        4,
        f"Compare of {children[:2]}: parallel coordinates, then parameters, metrics, ...",
        "Parallel Coordinates Plot" in text and sections,
    )
    page.go_back()
    time.sleep(5)

    page.get_by_text("Model registry", exact=True).first.click()
    time.sleep(5)
    page.keyboard.press("Escape")  # MLflow's "new Model Registry UI" announcement
    time.sleep(1)
    _step(page, out, 5, "Model registry shows @ champion", "champion" in page.content())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--experiment", default="attn_pipeline_mnist")
    parser.add_argument("--parent", default="default", help="the parent run to expand")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--mlflow", default=str(MLFLOW), help="the project's mlflow command")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlflow_ui_walkthrough"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{PORT}"
    server = subprocess.Popen(
        [args.mlflow, "ui", "--backend-store-uri", args.store, "--port", str(PORT)],
        cwd=PROJECT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    requests: list[tuple[str, str]] = []
    try:
        wait_until_serving(base, "mlflow ui")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("request", lambda request: requests.append((request.method, request.url)))
            walk(page, base, args.experiment, args.parent, args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    outside = [url for _, url in requests if not url.startswith((base, "data:", "blob:"))]
    posted = [url for method, url in requests if method == "POST" and "telemetry" in url]
    print(f"{len(requests)} requests; outside 127.0.0.1: {outside}; telemetry posted: {posted}")
    if outside or posted:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
