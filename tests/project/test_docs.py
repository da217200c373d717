"""The documentation site: it builds with `mkdocs build --strict`, every page of its
navigation opens in headless Chromium, and the results it shows are the study's own files
(docs/refresh_results.py)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, chromium

#: one worker runs this file: its tests share a module fixture (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("docs_site")

REFRESH = PROJECT_ROOT / "docs" / "refresh_results.py"
NAV_LINK = re.compile(r'href="([^"]*)"[^>]*class="md-nav__link')


def _study_folder(root: Path) -> Path:
    """What a finished study writes that the docs take: comparison.md/.png and runs.csv."""
    folder = root / "study"
    folder.mkdir(parents=True)
    (folder / "comparison.md").write_text(
        "FID-proxy figures: feature extractor `abc`.\n\n**Verdicts**\n\n"
        "| entry | compared with | comparison | NLL (IW) | FID-proxy |\n|---|---|---|---|---|\n"
        "| latent | none | equal budget | -0.4: **better** | -9.1: **no clear difference** |\n\n"
        "**Likelihood**\n\n| entry | seeds |\n|---|---:|\n| none | 2 |\n"
    )
    (folder / "comparison.png").write_bytes(b"\x89PNG\r\n\x1a\n-a-forest-plot")
    (folder / "runs.csv").write_text(
        "entry,seed,feature_extractor_hash\nnone,0,abc\nlatent,0,abc\nnone,1,abc\nlatent,1,abc\n"
    )
    return folder


@pytest.mark.process  # the docs' own script, as it is run
def test_the_results_are_the_studys_own_files(tmp_path: Path) -> None:
    study = _study_folder(tmp_path)
    docs, readme = tmp_path / "docs", tmp_path / "README.md"
    readme.write_text(
        "# p\n\n<!-- results-headline: start (docs/refresh_results.py writes this) -->\n"
        "old table\n<!-- results-headline: end -->\n\nafter\n"
    )
    command = [sys.executable, str(REFRESH), str(study), "--name", "mnist", "--title", "MNIST"]
    command += ["--hardware", "a CPU", "--command", "attn-study", "--when", "2026-01-02"]
    command += ["--docs", str(docs), "--readme", str(readme), "--headline"]
    for _ in range(2):  # again: the same files, one headline block
        subprocess.run(command, check=True, capture_output=True)
    target = docs / "results" / "mnist"
    assert (target / "comparison.md").read_text() == (study / "comparison.md").read_text()
    assert (target / "forest.png").read_bytes() == (study / "comparison.png").read_bytes()
    assert (target / "provenance.md").read_text().splitlines()[2] == (
        "| MNIST | 4 | none, latent | 0, 1 | `abc` | a CPU | `attn-study` | 2026-01-02 |"
    )
    text = readme.read_text()
    assert "old table" not in text and text.count("results-headline: start") == 1
    assert "| latent | none | equal budget | -0.4: **better**" in text
    assert "| none | 2 |" not in text  # the verdicts table alone
    assert text.endswith("after\n")
    unfinished = subprocess.run(
        [*command[:2], str(tmp_path), *command[3:]], capture_output=True, text=True, check=False
    )
    assert unfinished.returncode != 0 and "missing" in unfinished.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as CI builds it (strict: a broken link or include fails)."""
    folder = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(Path(sys.executable).with_name("mkdocs")), "build", "--strict", "-d", str(folder)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return folder


@pytest.mark.process
def test_every_page_of_the_navigation_opens_in_a_browser(site: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (the browser tests')

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1600})

            def dom(url: str) -> str:
                page.goto(url)
                return page.content()

            home = dom(base)
            pages = [link for link in dict.fromkeys(NAV_LINK.findall(home)) if link != "."]
            assert len(pages) >= 10, pages
            for name in pages:
                html = dom(base + name)
                assert "<h1" in html and "404 - Not found" not in html, name
            results = dom(base + "results/")
            assert "Verdicts on the headline metrics" in results  # the study's own table
            # the study's forest plot, copied beside the page, drawn
            assert 'src="mnist/forest.png"' in results
            assert (site / "results" / "mnist" / "forest.png").is_file()
            forest = page.locator('img[src="mnist/forest.png"]')
            assert forest.evaluate("image => image.complete && image.naturalWidth > 0")
            for name, url in (("home", base), ("results", base + "results/")):
                shot = tmp_path / f"{name}.png"
                page.goto(url)
                page.screenshot(path=str(shot))
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                assert shot.stat().st_size > 20_000
            browser.close()
    finally:
        server.shutdown()


def test_every_test_file_the_docs_name_exists() -> None:
    """docs/reliability.md maps each guarantee to its test: a renamed or removed test file
    must not leave a guarantee pointing at nothing."""
    pages = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("**/*.md"))]
    named = {
        (page.name, path)
        for page in pages
        for path in re.findall(r"tests/[\w/]+\.py", page.read_text())
    }
    assert named, "no page names a test file"
    missing = sorted(f"{page}: {p}" for page, p in named if not (PROJECT_ROOT / p).exists())
    assert not missing, missing


#: A time as the docs write one ("25.3 s", "12.7-14.0 min", "130 ms"; "7 min 44 s" is two).
TIME = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?\s?(?:ms|s|min|minutes)\b")
#: Words before a time that is a target, a limit or an interval, not a measurement.
NOT_MEASURED = re.compile(r"(target|at most|under|every|timeout|limit|aim)\W+(?:[\w-]+\W+){0,3}$")


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading."""
    return re.sub(r"[^\w\s-]", "", heading).strip().lower().replace(" ", "-")


def test_every_time_in_the_docs_has_a_provenance_row() -> None:
    """Each measured time in the README and the docs appears in a row of the provenance
    table (docs/performance.md), which names its hardware and command, or stands in a
    section of docs/performance.md that a row of the table links to."""
    performance = PROJECT_ROOT / "docs" / "performance.md"
    text = performance.read_text()
    provenance = text[text.index("## Provenance") :]
    rows = "\n".join(line for line in provenance.splitlines() if line.startswith("|"))
    linked = set(re.findall(r"\(#([\w-]+)\)", rows))
    unprovenanced = []
    for page in [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("**/*.md"))]:
        section = ""
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.startswith("#"):
                section = _slug(line.lstrip("#"))
                continue
            if page == performance and (section in linked or section == "provenance"):
                continue
            for time in TIME.finditer(line):
                if time.group(0) not in rows and not NOT_MEASURED.search(line[: time.start()]):
                    where = page.relative_to(PROJECT_ROOT)
                    unprovenanced.append(f"{where}:{number}: {time.group(0)}")
    assert not unprovenanced, f"times without a provenance row: {unprovenanced}"
