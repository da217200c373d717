"""Copy a study's tables and forest plot into the docs, so that every figure on the
Results page (and the README's headline table) is the one the study pipeline wrote.

    .venv/bin/python docs/refresh_results.py data/08_reporting/mnist/study --name mnist \\
        --title "MNIST, the default study" --hardware "2-core AMD EPYC with AVX-512 BF16" \\
        --command "attn-study" [--headline]

writes ``docs/results/<name>/comparison.md`` (the study's ``comparison.md``),
``docs/results/<name>/forest.png`` (its ``comparison.png``) and
``docs/results/<name>/provenance.md`` (what ran, where, with which command: entries,
seeds and cells from its ``runs.csv``); with ``--headline`` it also puts the study's
verdicts table into README.md between the ``results-headline`` markers. The Results page
includes these files; nothing in them is typed by hand.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADLINE_START = "<!-- results-headline: start (docs/refresh_results.py writes this) -->"
HEADLINE_END = "<!-- results-headline: end -->"


def verdict_table(comparison: str) -> str:
    """The first Markdown table of a study's ``comparison.md``: its headline verdicts."""
    lines = comparison.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| entry | compared")), None)
    if start is None:
        raise SystemExit("no verdicts table ('| entry | compared with ...') in comparison.md")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def provenance(runs_csv: Path, title: str, hardware: str, command: str, when: str) -> str:
    with runs_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    entries = list(dict.fromkeys(row["entry"] for row in rows))
    seeds = sorted({int(row["seed"]) for row in rows})
    extractors = sorted({row["feature_extractor_hash"] for row in rows})
    return (
        "| study | cells | entries | seeds | feature extractor | hardware | command | run |\n"
        "|---|---:|---|---|---|---|---|---|\n"
        f"| {title} | {len(rows)} | {', '.join(entries)} | {', '.join(map(str, seeds))} | "
        f"{', '.join(f'`{h}`' for h in extractors)} | {hardware} | `{command}` | {when} |\n"
    )


def replace_headline(readme: Path, table: str, link: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(HEADLINE_START) + r".*?" + re.escape(HEADLINE_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no {HEADLINE_START} ... {HEADLINE_END} block")
    block = f"{HEADLINE_START}\n{table}\n{link}\n{HEADLINE_END}"
    readme.write_text(pattern.sub(lambda _: block, text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study's output folder (comparison.md ...)")
    parser.add_argument("--name", required=True, help="folder under docs/results/")
    parser.add_argument("--title", required=True)
    parser.add_argument("--hardware", required=True, help="the machine the study ran on")
    parser.add_argument("--command", required=True, help="the command that ran the study")
    parser.add_argument("--when", default=datetime.now(UTC).strftime("%Y-%m-%d"))
    parser.add_argument("--headline", action="store_true", help="also the README's table")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    sources = {name: args.study / name for name in ("comparison.md", "comparison.png", "runs.csv")}
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"not a finished study's folder, missing: {', '.join(missing)}")
    target = args.docs / "results" / args.name
    target.mkdir(parents=True, exist_ok=True)
    comparison = sources["comparison.md"].read_text()
    (target / "comparison.md").write_text(comparison)
    shutil.copyfile(sources["comparison.png"], target / "forest.png")
    (target / "provenance.md").write_text(
        provenance(sources["runs.csv"], args.title, args.hardware, args.command, args.when)
    )
    if args.headline:
        link = f"All tables: [Results](docs/results.md) ({args.title}, {args.hardware})."
        replace_headline(args.readme, verdict_table(comparison), link)
    print(f"{target}: comparison.md, forest.png, provenance.md", file=sys.stderr)


if __name__ == "__main__":
    main()
