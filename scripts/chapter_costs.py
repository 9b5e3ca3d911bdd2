"""Measures what each chapter costs in quick mode and writes ``book/chapter_costs.csv``.

Every chapter of ``_toc.yml`` (in its reading order) runs under ``pytest --nbval`` (quick
mode, ``OMP_NUM_THREADS=1``, as ``make test`` runs it) with a JUnit report; a chapter's minutes are
the sum of its cells' execution times (kernel start-up excluded). The table also says which
chapters read committed results (their code names the ``results`` folder or ``book/data``) and
which chapters carry widgets. ``book/intro.md`` shows the CSV as it is.

Run it on an otherwise idle core: the minutes are wall-clock time of one single-threaded kernel.

Usage:
  python scripts/chapter_costs.py                      # run every chapter (minutes)
  python scripts/chapter_costs.py --junit-dir DIR      # reuse reports DIR/<chapter>.xml instead
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "book" / "chapter_costs.csv"
# Code that reads committed measurements: the results folder, or the book's data files.
READS_RESULTS = re.compile(r"""["']results["']|RESULTS\b|["']book["']\s*/\s*["']data["']""")
WIDGETS = re.compile(r"\b(static_explorer|live_explorer|layer_explorer)\(")


def chapters() -> list[Path]:
    """The notebooks of ``_toc.yml``, in the book's order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()]


def cell_seconds(report: Path) -> float:
    """Sum of the test-case times of an nbval JUnit report (one case per cell); fails on a failed run."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    if bad:
        raise SystemExit(f"chapter_costs: {report} records {bad} failed cells; fix the chapter first")
    cases = [float(case.get("time", 0.0)) for s in suites for case in s.iter("testcase")]
    if not cases:
        raise SystemExit(f"chapter_costs: {report} holds no cells")
    return sum(cases)


def run_chapter(notebook: Path, report: Path) -> None:
    """Runs one chapter under nbval, writing its JUnit report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("POSENC_FULL", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", str(notebook),
           "--nbval-sanitize-with", str(ROOT / "notebooks" / "sanitize.cfg"), f"--junitxml={report}"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def describe(notebook: Path) -> tuple[str, bool, bool]:
    """The chapter's title (its first heading), whether it reads committed results, whether it has widgets."""
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    title = next((line.lstrip("# ").strip() for c in cells if c["cell_type"] == "markdown"
                  for line in "".join(c["source"]).splitlines() if line.startswith("# ")), notebook.stem)
    return title, bool(READS_RESULTS.search(code)), bool(WIDGETS.search(code))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--junit-dir", type=Path, help="reuse <dir>/<chapter>.xml instead of running the chapters")
    args = parser.parse_args(argv)
    rows, total = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in chapters():
            report = (args.junit_dir or Path(tmp)) / f"{notebook.stem}.xml"
            if args.junit_dir is None:
                run_chapter(notebook, report)
            elif not report.is_file():
                raise SystemExit(f"chapter_costs: no report {report}")
            title, reads, widgets = describe(notebook)
            seconds = cell_seconds(report)
            total += seconds
            minutes = seconds / 60
            rows.append({"chapter": f"{notebook.stem[:2]}. {title}",
                         "quick mode (minutes, one core)": f"{minutes:.1f}" if minutes >= 0.05 else "< 0.1",
                         "reads committed results": "yes" if reads else "no",
                         "widgets": "yes" if widgets else "no"})
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"chapter_costs: wrote {OUT.relative_to(ROOT)} ({len(rows)} chapters, {total / 60:.1f} minutes in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
