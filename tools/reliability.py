#!/usr/bin/env python3
"""The reliability matrix, in full: every row, every column, every platform.

    python3 dev.py reliability [ARGS]        the documented command (syncs the environment first)
    python3 tools/reliability.py [ARGS]      the same, with the project's .venv as it is

Runs the matrix's column folders (tests/deploy/airflow, prefect, dagster), each in its own pytest
process (each starts its own orchestrator deployment, with its own temporary home), with
``RUNBRIDGE_MATRIX=full``, ``RUNBRIDGE_MATRIX_PLATFORMS=all``, ``RUNBRIDGE_AIRFLOW_DB=postgres``
and ``RUNBRIDGE_MATRIX_OUT`` set to a temporary file where every cell records its outcome
(tests/deploy/conftest.py). Then it merges the outcomes into docs/reliability.json, which keeps
every cell's last outcome and the run it came from (its date, command, code tested and Airflow
database): the cells in this run's scope (its platforms, columns and rows) take this run's
outcome, or none if it recorded none; the others keep theirs. So a run of one platform, or of
one column folder, updates its part of the matrix. Last it renders docs/reliability.md from the
JSON: one table per platform, rows x columns, each cell ``pass``, ``FAIL``, ``n/a`` (the row
does not apply to the column, or the platform cannot do what it needs) or ``not run`` (applies
but no outcome was recorded), each section naming the runs its cells come from, the failures'
details with their run, the totals over all platforms.

Options: ``--platforms rest,vi`` (default ``all``), ``--quick`` (only the CI rows),
``--columns airflow,dagster`` (folders to run; default all three), ``--airflow-db sqlite``
(default ``postgres``, or ``RUNBRIDGE_AIRFLOW_DB``), ``--cells FILE`` (merge an existing
outcome file instead of running anything: give the platforms, columns and rows it covers),
``--render`` (render the JSON again, run nothing), ``--fresh`` (forget earlier runs),
``--out PATH`` (default docs/reliability.md), ``--data PATH`` (default: ``--out`` with
``.json``), and anything after ``--`` goes to pytest. Exit status 1 if a cell of this run
failed or a pytest process failed. Standard library only (and tests/deploy/matrix.py).
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

AIRFLOW_DBS = ("postgres", "sqlite")
"""The Airflow deployment's databases (``RUNBRIDGE_AIRFLOW_DB``): the full runs use PostgreSQL
(SQLite's "database is locked" once killed the triggerer under 200 tasks)."""


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
    airflow_db: str = "postgres",
) -> list[dict[str, Any]]:
    """Run each column folder in its own pytest process; their exit status and time."""
    env = dict(os.environ)
    env.update(
        RUNBRIDGE_MATRIX="quick" if quick else "full",
        RUNBRIDGE_MATRIX_PLATFORMS=platforms,
        RUNBRIDGE_MATRIX_OUT=str(cells),
        RUNBRIDGE_AIRFLOW_DB=airflow_db,
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


# -- the outcomes kept across runs (docs/reliability.json) -------------------------------------
def key(platform: str, row: str, column: str) -> str:
    return f"{platform}/{row}/{column}"


def load_data(path: Path) -> dict[str, Any]:
    """``{"runs": {id: run}, "cells": {"platform/row/column": cell}}`` (empty if no file)."""
    if not path.exists():
        return {"runs": {}, "cells": {}}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"runs": dict(data.get("runs") or {}), "cells": dict(data.get("cells") or {})}


def save_data(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def merge(
    data: dict[str, Any],
    cells: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """``data`` with ``run``'s outcomes: every cell in the run's scope (its platforms, columns
    and rows, where the row applies) takes this run's outcome, or none (``not run``) if it
    recorded none; cells outside the scope keep theirs. Runs no cell comes from are dropped."""
    outcomes = matrix.summary(cells)
    quick = run["rows"] == "quick"
    cell_map: dict[str, Any] = dict(data["cells"])
    for platform in run["platforms"]:
        for column in run["columns"]:
            for row in matrix.ROWS:
                if quick and not row.quick:
                    continue
                if not matrix.applies(row, column, platform):
                    continue
                k = key(platform, row.id, column)
                cell_map.pop(k, None)
                found = outcomes.get((platform, row.id, column))
                if found is not None:
                    cell_map[k] = {
                        "outcome": str(found["outcome"]),
                        "detail": str(found.get("detail") or "")[-2000:],
                        "run": run["id"],
                    }
    runs = {**data["runs"], run["id"]: dict(run)}
    used = {c["run"] for c in cell_map.values()}
    return {"runs": {i: r for i, r in runs.items() if i in used}, "cells": cell_map}


def backend_text(run: Mapping[str, Any]) -> str:
    db = run.get("airflow_db")
    if not db:
        return "no Airflow column"
    return {"postgres": "Airflow on PostgreSQL", "sqlite": "Airflow on SQLite"}.get(
        str(db), f"Airflow on {db}"
    )


def run_text(run: Mapping[str, Any]) -> str:
    """One run in a line: its date, the code it tested, the Airflow database."""
    return f"{run.get('date', '?')}, code {run.get('commit', '?')}, {backend_text(run)}"


def cell_text(
    cells: Mapping[str, Mapping[str, Any]], platform: str, row: matrix.Row, column: str
) -> str:
    if not matrix.applies(row, column, platform):
        return "n/a"
    cell = cells.get(key(platform, row.id, column))
    if cell is None:
        return "not run"
    return {"pass": "pass", "fail": "**FAIL**", "skip": "not run"}.get(str(cell["outcome"]), "?")


def shown_platforms(data: Mapping[str, Any]) -> list[str]:
    """The platforms some kept run covered, in the matrix's order."""
    seen = {p for run in data["runs"].values() for p in run.get("platforms", ())}
    seen |= {k.split("/", 1)[0] for k in data["cells"]}
    return [p for p in matrix.ALL_PLATFORMS if p in seen]


def render(data: Mapping[str, Any]) -> tuple[str, int]:
    """docs/reliability.md's text from the kept outcomes, and the number of failed cells."""
    cells: Mapping[str, Mapping[str, Any]] = data["cells"]
    runs: Mapping[str, Mapping[str, Any]] = data["runs"]
    platforms = shown_platforms(data)
    lines = [
        "# Reliability matrix",
        "",
        "<!-- Written by tools/reliability.py (`python3 dev.py reliability`) from",
        "     docs/reliability.json; do not edit. -->",
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
        "The tables gather several runs: a run of some platforms or columns replaces only their",
        "cells (docs/reliability.json keeps each cell's outcome and the run it came from). Each",
        "platform's section names the runs its cells come from: the date, the code tested and",
        "the Airflow deployment's database.",
        "",
        "Runs:",
        "",
    ]
    for run_id in sorted(runs, reverse=True):
        run = runs[run_id]
        minutes = run.get("minutes")
        lines.append(
            f"- `{run.get('command', '?')}`: {run.get('date', '?')}"
            + (f", {float(minutes):.1f} min" if minutes is not None else "")
            + f"; code tested {run.get('commit', '?')}; {backend_text(run)}; rows: "
            + ("the quick (CI) rows" if run.get("rows") == "quick" else "all")
            + f"; platforms: {', '.join(run.get('platforms', ()))}"
            + f"; columns: {', '.join(run.get('columns', ()))}"
            + (f"; host: {run['host']}" if run.get("host") else "")
        )
        for folder in run.get("folders", ()):
            if folder.get("missing"):
                lines.append(f"  - tests/deploy/{folder['folder']}: no such folder")
            else:
                lines.append(
                    f"  - tests/deploy/{folder['folder']}: pytest exit {folder['exit']}, "
                    f"{float(folder['seconds']) / 60:.1f} min"
                )
    lines += [
        "",
        "Cells: `pass`; **FAIL** (details below); `n/a`: the row does not apply to the column "
        "(`clear` is Airflow's, `flow_cancel` Prefect's, `terminate` Dagster's...) or the "
        "platform cannot do what the row needs (Lume has no cancel and no run lookup by key); "
        "`not run`: it applies, but no outcome was recorded (skipped, or its column's "
        "deployment did not get to it, or no run covered it yet).",
        "",
    ]
    failed = 0
    totals: dict[str, int] = {}
    tables: list[str] = []
    for platform in platforms:
        tables += [f"## {platform}", ""]
        from_runs = sorted(
            {c["run"] for k, c in cells.items() if k.split("/", 1)[0] == platform}, reverse=True
        )
        tables.append(
            "From: "
            + ("; ".join(run_text(runs[r]) for r in from_runs if r in runs) or "no run")
            + "."
        )
        tables.append("")
        tables.append("| row | " + " | ".join(matrix.COLUMNS) + " |")
        tables.append("|---|" + "---|" * len(matrix.COLUMNS))
        for row in matrix.ROWS:
            texts = [cell_text(cells, platform, row, c) for c in matrix.COLUMNS]
            for text in texts:
                totals[text] = totals.get(text, 0) + 1
            failed += texts.count("**FAIL**")
            tables.append(f"| `{row.id}` | " + " | ".join(texts) + " |")
        tables.append("")
    summary = ", ".join(
        f"{totals.get(k, 0)} {k.strip('*')}" for k in ("pass", "**FAIL**", "not run", "n/a")
    )
    lines += [f"Totals (over {', '.join(platforms) or 'no platform'}): {summary}.", ""]
    lines += tables
    lines += ["## Failures", ""]
    failures = [
        (k.split("/"), c)
        for k, c in sorted(cells.items())
        if c.get("outcome") == "fail" and k.split("/", 1)[0] in platforms
    ]
    if not failures:
        lines += ["None.", ""]
    for (platform, row_id, column), cell in failures:
        run = runs.get(str(cell.get("run")), {})
        lines += [
            f"### {platform} / `{row_id}` / {column}",
            "",
            f"Run: {run_text(run)}.",
            "",
            "```text",
            str(cell.get("detail") or "(no detail recorded)").strip()[-1500:],
            "```",
            "",
        ]
    lines += ["## Rows", "", "| row | expected | quick | what happens |", "|---|---|---|---|"]
    for row in matrix.ROWS:
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
    parser.add_argument("--cells", type=Path, help="merge this outcome file; run nothing")
    parser.add_argument(
        "--render", action="store_true", help="render the kept outcomes again; run nothing"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument(
        "--data", type=Path, help="the outcomes kept across runs (default: --out's .json)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="forget the kept outcomes of earlier runs"
    )
    parser.add_argument(
        "--airflow-db",
        choices=AIRFLOW_DBS,
        default=os.environ.get("RUNBRIDGE_AIRFLOW_DB") or "postgres",
        help="the Airflow deployment's database (default postgres, or RUNBRIDGE_AIRFLOW_DB)",
    )
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
    data_path: Path = args.data or args.out.with_suffix(".json")

    def kept() -> dict[str, Any]:  # read when needed: another run may have merged meanwhile
        return {"runs": {}, "cells": {}} if args.fresh else load_data(data_path)

    data = kept()

    failed_here = 0
    runs: list[dict[str, Any]] = []
    if not args.render:
        started = datetime.datetime.now(datetime.timezone.utc)
        t0 = time.monotonic()
        if args.cells is not None:
            cells_path = args.cells
            command = (
                f"python3 tools/reliability.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
            )
        else:
            cells_path = Path(tempfile.mkdtemp(prefix="runbridge-reliability-")) / "cells.jsonl"
            via = (
                "python3 dev.py reliability"
                if os.environ.get("RUNBRIDGE_UV")
                else "python3 tools/reliability.py"
            )
            given = sys.argv[1:] if argv is None else list(argv)
            command = via + (f" {shlex.join(given)}" if given else "")
            runs = run_folders(
                folders, args.platforms, args.quick, cells_path, args.pytest_args, args.airflow_db
            )
        cells = load_cells(cells_path)
        run = {
            "id": started.strftime("%Y%m%dT%H%M%S.%fZ"),
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "minutes": None if args.cells is not None else (time.monotonic() - t0) / 60,
            "command": command,
            "commit": code_tested(),
            "host": f"Python {host.python_version()} on {host.system()} {host.machine()}",
            "rows": "quick" if args.quick else "all",
            "platforms": platforms,
            "columns": [c for f in folders for c in FOLDERS[f]],
            "airflow_db": args.airflow_db if "airflow" in folders else None,
            "folders": runs,
        }
        failed_here = sum(c.get("outcome") == "fail" for c in matrix.summary(cells).values())
        data = merge(kept(), cells, run)
        save_data(data_path, data)
        print(f"reliability: {len(cells)} cell(s) recorded in {cells_path}; kept in {data_path}")
    text, failed = render(data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"reliability: wrote {args.out}: {failed} failed cell(s) in all")
    broken = [r for r in runs if r.get("exit") not in (0, None)]
    if not args.render:
        print(
            f"reliability: this run: {failed_here} failed cell(s); pytest failed in "
            f"{[r['folder'] for r in broken]}"
        )
    return 1 if failed_here or broken or (args.render and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
