#!/usr/bin/env python3
"""The reliability matrix, in full: every row, every column, every platform.

    python3 dev.py reliability [ARGS]        the documented command (syncs the environment first)
    python3 tools/reliability.py [ARGS]      the same, with the project's .venv as it is

Runs the matrix's column folders (tests/deploy/airflow, prefect, dagster), each in its own pytest
process (each starts its own orchestrator deployment, with its own temporary home), with
``RUNBRIDGE_MATRIX=full``, ``RUNBRIDGE_MATRIX_PLATFORMS=all`` and ``RUNBRIDGE_MATRIX_OUT`` set
to a temporary file where every cell records its outcome (tests/deploy/conftest.py), then writes
docs/reliability.md: one table per platform, rows x columns, each cell ``pass``, ``FAIL``,
``n/a`` (the row does not apply to the column, or the platform cannot do what it needs) or
``not run`` (applies but no outcome was recorded: skipped, or its folder did not get there),
then the failures' details, the command, the date and the code tested.

Options: ``--platforms rest,vi`` (default ``all``), ``--quick`` (only the CI rows),
``--columns airflow,dagster`` (folders to run; default all three), ``--cells FILE`` (render an
existing outcome file instead of running anything), ``--out PATH`` (default
docs/reliability.md), ``--keep-going`` (run the other folders after one fails to start; on by
default), and anything after ``--`` goes to pytest. Exit status 1 if a cell failed or a pytest
process failed without recording cells. Standard library only (and tests/deploy/matrix.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform as host
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.deploy import matrix  # noqa: E402  (stdlib only at import)

FOLDERS: dict[str, tuple[str, ...]] = {
    "airflow": matrix.AIRFLOW,
    "prefect": matrix.PREFECT,
    "dagster": matrix.DAGSTER,
}
"""The column folders under tests/deploy and the columns each holds."""


def project_python() -> str:
    """The project's .venv interpreter (what `dev.py sync` builds), else this one."""
    bin_dir = "Scripts" if os.name == "nt" else "bin"
    candidate = ROOT / ".venv" / bin_dir / ("python.exe" if os.name == "nt" else "python")
    return str(candidate) if candidate.exists() else sys.executable


def git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def code_tested() -> str:
    commit = git("rev-parse", "--short=12", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "runbridge", "tests")
    return f"{commit}" + (" plus uncommitted changes in the work tree" if dirty else "")


def run_folders(
    folders: Sequence[str],
    platforms: str,
    quick: bool,
    cells: Path,
    pytest_args: Sequence[str],
) -> list[dict[str, Any]]:
    """Run each column folder in its own pytest process; their exit status and time."""
    env = dict(os.environ)
    env.update(
        RUNBRIDGE_MATRIX="quick" if quick else "full",
        RUNBRIDGE_MATRIX_PLATFORMS=platforms,
        RUNBRIDGE_MATRIX_OUT=str(cells),
    )
    results = []
    for folder in folders:
        path = ROOT / "tests" / "deploy" / folder
        command = [project_python(), "-m", "pytest", str(path.relative_to(ROOT))]
        command += ["-q", "-p", "no:cacheprovider", "-rfEs", *pytest_args]
        print(f"reliability: {shlex.join(command)}", flush=True)
        t0 = time.monotonic()
        if not path.is_dir():
            results.append({"folder": folder, "exit": None, "seconds": 0.0, "missing": True})
            print(f"reliability: no folder {path}; its cells are 'not run'", flush=True)
            continue
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        seconds = time.monotonic() - t0
        results.append({"folder": folder, "exit": done.returncode, "seconds": seconds})
        print(
            f"reliability: {folder}: exit {done.returncode} in {seconds / 60:.1f} min", flush=True
        )
    return results


def load_cells(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    cells = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                cells.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a killed process
    return cells


def cell_text(
    outcomes: Mapping[tuple[str, str, str], Mapping[str, Any]],
    platform: str,
    row: matrix.Row,
    column: str,
) -> str:
    if not matrix.applies(row, column, platform):
        return "n/a"
    cell = outcomes.get((platform, row.id, column))
    if cell is None:
        return "not run"
    return {"pass": "pass", "fail": "**FAIL**", "skip": "not run"}.get(str(cell["outcome"]), "?")


def render(
    cells: list[dict[str, Any]],
    *,
    platforms: Sequence[str],
    command: str,
    started: datetime.datetime,
    minutes: float | None,
    runs: Sequence[Mapping[str, Any]],
    quick: bool,
) -> tuple[str, int]:
    """docs/reliability.md's text, and the number of failed cells."""
    outcomes = matrix.summary(cells)
    rows = [r for r in matrix.ROWS if r.quick or not quick]
    lines = [
        "# Reliability matrix",
        "",
        "<!-- Written by tools/reliability.py (`python3 dev.py reliability`); do not edit. -->",
        "",
        "Every scenario of issue 14 (rows) run against every way runbridge runs a platform's run",
        "from an orchestrator (columns), in real deployments started by the test session",
        "(Airflow scheduler, triggerer, dag-processor and api-server; a Prefect server and",
        "worker; a Dagster instance, code server and daemon) against an emulator in its own",
        "process (`runbridge emulate`), scripted through its control API. The row table, and",
        "what each row expects (the task's final state, runs launched, cancels that reached the",
        "platform), is tests/deploy/matrix.py; how to test your own DAGs, flows and jobs the",
        "same way is docs/testing.md.",
        "",
        f"- Command: `{command}`",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}"
        + (f", {minutes:.1f} min" if minutes is not None else ""),
        f"- Code tested: {code_tested()}",
        f"- Host: Python {host.python_version()} on {host.system()} {host.machine()}",
        f"- Rows: {'the quick (CI) rows only' if quick else 'all'}; platforms: "
        + ", ".join(platforms),
        "",
        "Cells: `pass`; **FAIL** (details below); `n/a`: the row does not apply to the column "
        "(`clear` is Airflow's, `flow_cancel` Prefect's, `terminate` Dagster's...) or the "
        "platform cannot do what the row needs (Lume has no cancel and no run lookup by key); "
        "`not run`: it applies, but no outcome was recorded (skipped, or its column's "
        "deployment did not get to it).",
        "",
    ]
    for run in runs:
        if run.get("missing"):
            lines.append(f"- tests/deploy/{run['folder']}: no such folder (its cells: not run)")
        else:
            lines.append(
                f"- tests/deploy/{run['folder']}: pytest exit {run['exit']}, "
                f"{float(run['seconds']) / 60:.1f} min"
            )
    if runs:
        lines.append("")
    failed = 0
    totals: dict[str, int] = {}
    for platform in platforms:
        lines += [f"## {platform}", ""]
        lines.append("| row | " + " | ".join(matrix.COLUMNS) + " |")
        lines.append("|---|" + "---|" * len(matrix.COLUMNS))
        for row in rows:
            texts = [cell_text(outcomes, platform, row, c) for c in matrix.COLUMNS]
            for text in texts:
                totals[text] = totals.get(text, 0) + 1
            failed += texts.count("**FAIL**")
            lines.append(f"| `{row.id}` | " + " | ".join(texts) + " |")
        lines.append("")
    summary = ", ".join(
        f"{totals.get(k, 0)} {k.strip('*')}" for k in ("pass", "**FAIL**", "not run", "n/a")
    )
    first_table = lines.index(f"## {platforms[0]}") if platforms else len(lines)
    lines[first_table:first_table] = [f"Totals: {summary}.", ""]
    failures = [
        c
        for key, c in sorted(outcomes.items())
        if c.get("outcome") == "fail" and key[0] in platforms
    ]
    lines += ["## Failures", ""]
    if not failures:
        lines += ["None.", ""]
    for cell in failures:
        lines += [
            f"### {cell['platform']} / `{cell['row']}` / {cell['column']}",
            "",
            "```text",
            str(cell.get("detail") or "(no detail recorded)").strip()[-1500:],
            "```",
            "",
        ]
    lines += ["## Rows", "", "| row | expected | quick | what happens |", "|---|---|---|---|"]
    for row in rows:
        expected: list[str] = [row.expect_task]
        if row.expect_launches is not None:
            expected.append(
                f"{row.expect_launches} launch{'es' if row.expect_launches != 1 else ''}"
            )
        if row.expect_cancels is not None:
            expected.append(f"{row.expect_cancels} cancel{'s' if row.expect_cancels != 1 else ''}")
        if row.expect_run:
            expected.append(f"run {row.expect_run}")
        lines.append(
            f"| `{row.id}` | {', '.join(expected)} | {'yes' if row.quick else 'no'} | {row.title} |"
        )
    lines.append("")
    return "\n".join(lines), failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/reliability.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--platforms", default="all", help="all (default) or a comma list")
    parser.add_argument("--quick", action="store_true", help="only the quick (CI) rows")
    parser.add_argument(
        "--columns", default=",".join(FOLDERS), help="folders to run: airflow,prefect,dagster"
    )
    parser.add_argument("--cells", type=Path, help="render this outcome file; run nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)

    os.environ["RUNBRIDGE_MATRIX_PLATFORMS"] = args.platforms
    try:
        platforms = matrix.platforms()
    except ValueError as exc:
        parser.error(str(exc))
    folders = [f.strip() for f in args.columns.split(",") if f.strip()]
    unknown = [f for f in folders if f not in FOLDERS]
    if unknown:
        parser.error(f"unknown column folder(s) {unknown}; known: {', '.join(FOLDERS)}")

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    runs: list[dict[str, Any]] = []
    if args.cells is not None:
        cells_path = args.cells
        command = f"python3 tools/reliability.py --cells {args.cells}"
    else:
        cells_path = Path(tempfile.mkdtemp(prefix="runbridge-reliability-")) / "cells.jsonl"
        via = (
            "python3 dev.py reliability"
            if os.environ.get("RUNBRIDGE_UV")
            else "python3 tools/reliability.py"
        )
        command = via + (f" {shlex.join(sys.argv[1:])}" if argv is None and sys.argv[1:] else "")
        runs = run_folders(folders, args.platforms, args.quick, cells_path, args.pytest_args)
    cells = load_cells(cells_path)
    minutes = None if args.cells is not None else (time.monotonic() - t0) / 60
    text, failed = render(
        cells,
        platforms=platforms,
        command=command,
        started=started,
        minutes=minutes,
        runs=runs,
        quick=args.quick,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"reliability: {len(cells)} cell(s) recorded in {cells_path}; wrote {args.out}")
    broken = [r for r in runs if r.get("exit") not in (0, None)]
    print(f"reliability: {failed} failed cell(s); pytest failed in {[r['folder'] for r in broken]}")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
