"""The matrix's own plumbing, with no orchestrator: the emulator process, the control fixture,
``check`` and the cell recording (a runbridge client plays the column)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbridge.core import PollSchedule, RunClient, RunState
from runbridge.testing import EmulatorControl
from tests.deploy import matrix
from tests.deploy.conftest import EmulatorServer

OUTCOME = {
    RunState.SUCCEEDED: "success",
    RunState.FAILED: "failed",
    RunState.CANCELLED: "failed",
}


def _client(server: EmulatorServer) -> RunClient:
    return RunClient(
        server.platform,
        server.url,
        server.token,
        poll=PollSchedule.fixed(0.1),
        **(server.options or {}),
    )


@pytest.mark.parametrize("row", [matrix.row("success"), matrix.row("failure")], ids=matrix.row_id)
def test_client_cell(
    row: matrix.Row, emulator_server: EmulatorServer, control: EmulatorControl
) -> None:
    """A row played by a bare client: the emulator process obeys the row's script, and
    ``check`` passes the cell (and fails it when the expectation is changed)."""
    assert control.record()["runs"] == []  # reset by the fixture
    control.script(*row.scripts)
    with _client(emulator_server) as client:
        status = client.wait(client.launch(emulator_server.params), 60)
    state = OUTCOME[status.state]
    error = status.message or ""
    if emulator_server.platform == "wandb" and status.state is RunState.FAILED:
        assert status.outputs["summary"].get("error") == matrix.FAILURE_MESSAGE
    assert not matrix.check(row, control, state, error=error, platform=emulator_server.platform)
    wrong = matrix.check(row, control, state, error=error, launches=2, cancels=1)
    assert wrong == [
        "1 launch(es), expected 2",
        "0 cancel(s), expected 1",
    ]


def test_check_names_each_difference() -> None:
    row = matrix.row("wait_timeout")
    record = {
        "platform": "rest",
        "launches": 2,
        "cancels": 1,
        "runs": [{"id": "r1", "state": "succeeded", "finished": True, "cancelled": False}],
    }
    problems = matrix.check(row, record, "success")
    assert problems == [
        "task ended 'success', expected 'failed'",
        "2 launch(es), expected 1",
        "1 cancel(s), expected 0",
        "run r1 ended (succeeded), expected running",
    ]


def test_rows_are_consistent() -> None:
    assert len({r.id for r in matrix.ROWS}) == len(matrix.ROWS) == 22
    for r in matrix.ROWS:
        assert set(r.applies_to) <= set(matrix.COLUMNS), r.id
        assert r.expect_task in ("success", "failed", "stopped"), r.id
        assert r.needs <= {"cancel", "find"}, r.id
    assert matrix.rows_for("airflow-operator", every=False) == [
        r for r in matrix.ROWS if r.quick and "airflow-operator" in r.applies_to
    ]
    assert not matrix.applies(matrix.row("run_timeout"), "prefect-task", "lume")
    assert matrix.applies(matrix.row("run_timeout"), "prefect-task", "rest")
    assert not matrix.applies(matrix.row("clear"), "dagster-op")


def test_platforms_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNBRIDGE_MATRIX_PLATFORMS", raising=False)
    assert matrix.platforms() == ["rest"]
    monkeypatch.setenv("RUNBRIDGE_MATRIX_PLATFORMS", "all")
    assert matrix.platforms() == list(matrix.ALL_PLATFORMS)
    monkeypatch.setenv("RUNBRIDGE_MATRIX_PLATFORMS", "vi, lume")
    assert matrix.platforms() == ["vi", "lume"]
    monkeypatch.setenv("RUNBRIDGE_MATRIX_PLATFORMS", "vi,nope")
    with pytest.raises(ValueError, match="nope"):
        matrix.platforms()


def test_record_appends_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cells.jsonl"
    monkeypatch.setenv("RUNBRIDGE_MATRIX_OUT", str(out))
    matrix.record("prefect-task", "success", "rest", "pass")
    matrix.record("prefect-task", matrix.row("failure"), "vi", "fail", "boom")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(c["row"], c["platform"], c["outcome"], c["detail"]) for c in lines] == [
        ("success", "rest", "pass", ""),
        ("failure", "vi", "fail", "boom"),
    ]


CELL_TEST = """
import pytest
from tests.deploy import matrix


@pytest.mark.parametrize("platform", ["rest"])
@pytest.mark.parametrize("row", [matrix.row("success"), matrix.row("failure")], ids=matrix.row_id)
@pytest.mark.matrix_cell("prefect-task")
def test_cell(row, platform):
    assert row.id == "success", "the scripted failure"


@pytest.mark.matrix_cell("dagster-op", "terminate")
def test_skipped():
    pytest.skip("no deployment here")
"""


def test_cells_are_recorded_and_rendered(tmp_path: Path) -> None:
    """The report hook records each marked cell's outcome (a pytest process of its own, with
    this folder's conftest), and tools/reliability.py renders them."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "conftest.py").write_text(
        "from tests.deploy.conftest import pytest_configure, pytest_runtest_makereport\n"
    )
    (tmp_path / "test_cells.py").write_text(CELL_TEST)
    cells = tmp_path / "cells.jsonl"
    env = {**os.environ, "RUNBRIDGE_MATRIX_OUT": str(cells), "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    lines = [json.loads(line) for line in cells.read_text().splitlines()]
    got = {(c["column"], c["row"], c["platform"], c["outcome"]) for c in lines}
    assert got == {
        ("prefect-task", "success", "rest", "pass"),
        ("prefect-task", "failure", "rest", "fail"),
        ("dagster-op", "terminate", "?", "skip"),
    }
    assert "the scripted failure" in next(c["detail"] for c in lines if c["outcome"] == "fail")
    out = tmp_path / "reliability.md"
    rendered = subprocess.run(
        [
            sys.executable,
            str(root / "tools" / "reliability.py"),
            "--cells",
            str(cells),
            "--platforms",
            "rest,lume",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 1, rendered.stdout + rendered.stderr  # a failed cell
    text = out.read_text()
    rest = text.split("## rest", 1)[1].split("## lume", 1)[0]
    assert (
        "| `success` | not run | not run | not run | pass | not run | not run | not run |" in rest
    )
    assert "| `failure` | not run | not run | not run | **FAIL** | not run |" in rest
    assert "| `clear` | not run | not run | n/a | n/a | n/a | n/a | n/a |" in rest
    lume = text.split("## lume", 1)[1].split("## Failures", 1)[0]
    assert "| `run_timeout` | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in lume
    assert "### rest / `failure` / prefect-task" in text and "the scripted failure" in text


def _merge(
    out: Path, cells: list[tuple[str, str, str, str]], *args: str
) -> subprocess.CompletedProcess[str]:
    """tools/reliability.py merging these (column, row, platform, outcome) cells into ``out``."""
    root = Path(__file__).resolve().parents[2]
    recorded = out.with_name(f"cells-{len(list(out.parent.glob('cells-*')))}.jsonl")
    recorded.write_text(
        "".join(
            json.dumps(
                {"column": c, "row": r, "platform": p, "outcome": o, "detail": f"{r} detail 51c"}
            )
            + "\n"
            for c, r, p, o in cells
        )
    )
    return subprocess.run(
        [sys.executable, str(root / "tools" / "reliability.py"), "--out", str(out), *args]
        + (["--cells", str(recorded)] if cells else []),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _section(text: str, platform: str) -> str:
    return text.split(f"## {platform}\n", 1)[1].split("\n## ", 1)[0]


def test_runs_of_some_platforms_update_one_document(tmp_path: Path) -> None:
    """tools/reliability.py keeps each cell's outcome and run in a JSON beside the document: a
    run of one platform or one column folder replaces only its cells; every section and
    failure names its run (date, code, Airflow database); the totals cover all platforms."""
    out, data = tmp_path / "reliability.md", tmp_path / "reliability.json"
    first = [(c, "success", "rest", "pass") for c in matrix.COLUMNS]
    failed = ("dagster-op", "failure", "rest", "fail")
    done = _merge(out, [*first, failed], "--platforms", "rest", "--quick")
    assert done.returncode == 1, done.stdout + done.stderr  # its failed cell
    (first_run,) = json.loads(data.read_text())["runs"].values()
    assert first_run["airflow_db"] == "postgres" and first_run["platforms"] == ["rest"]

    second = [("prefect-task", "success", "vi", "pass")]
    done = _merge(
        out, second, "--platforms", "vi", "--columns", "prefect", "--airflow-db", "sqlite"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    rest, vi = _section(text, "rest"), _section(text, "vi")
    assert "| `success` | pass | pass | pass | pass | pass | pass | pass |" in rest
    assert "| `failure` | not run | not run | not run | not run | not run | **FAIL** |" in rest
    assert "| `success` | not run | not run | not run | pass | not run | not run | not run |" in vi
    assert "Airflow on PostgreSQL" in rest and "no Airflow column" in vi
    assert "Totals (over rest, vi): 8 pass, 1 FAIL," in text
    failure = text.split("### rest / `failure` / dagster-op", 1)[1]
    assert failure.lstrip().startswith("Run: ") and "Airflow on PostgreSQL" in failure
    assert "failure detail 51c" in failure

    # rest's dagster columns again: its failure is fixed
    third = [("dagster-op", "failure", "rest", "pass")]
    done = _merge(out, third, "--platforms", "rest", "--columns", "dagster", "--quick")
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    rest = _section(text, "rest")
    # dagster-op/success was in the third run's scope and not recorded by it: not run now
    assert "| `success` | pass | pass | pass | pass | pass | not run | not run |" in rest
    assert "| `failure` | not run | not run | not run | not run | not run | pass |" in rest
    assert "## Failures\n\nNone." in text
    assert len(json.loads(data.read_text())["runs"]) == 3
    render = _merge(out, [], "--render")
    assert render.returncode == 0 and out.read_text() == text


# -- the shared runner -------------------------------------------------------------------------
def test_cell_params_one_parametrization(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.deploy import runner

    monkeypatch.setenv("RUNBRIDGE_MATRIX_PLATFORMS", "rest,lume")
    monkeypatch.delenv("RUNBRIDGE_MATRIX", raising=False)
    params = runner.cell_params(
        matrix.PREFECT,
        timeout=77,
        skip={("prefect-job", "success"): "why not"},
        known_defects={("prefect-task", "failure"): "a defect"},
    )
    ids = [p.id for p in params]
    assert ids[0] == "prefect-task-success-rest"
    assert "prefect-task-platform_cancel-lume" not in ids  # lume cannot cancel: n/a
    assert "prefect-task-success-lume" in ids
    assert not any("worker_sigkill" in i for i in ids)  # not a quick row
    by_id = {p.id: p for p in params}
    marks = {m.name: m for m in by_id["prefect-job-success-rest"].marks}
    assert marks["matrix_cell"].args == ("prefect-job", "success")
    assert marks["timeout"].args == (77,) and marks["skip"].kwargs["reason"] == "why not"
    assert by_id["prefect-task-failure-rest"].marks[-1].kwargs == {
        "strict": True,
        "reason": "a defect",
    }
    rows_first = [p.id for p in runner.cell_params(matrix.PREFECT, rows_first=True)]
    assert rows_first[:3] == [
        "prefect-task-success-rest",
        "prefect-task-success-lume",
        "prefect-job-success-rest",
    ]
    assert sorted(rows_first) == sorted(ids)


@dataclasses.dataclass
class _Outcome:
    cell: matrix.Cell
    problems: list[str]
    crashed: str | None = None
    seconds: float = 1.5

    def describe(self) -> str:
        return f"{self.cell.id}: described"


class _Runner:
    def __init__(self) -> None:
        self.closed = False

    def result(self, cell: matrix.Cell) -> _Outcome:
        return _Outcome(cell, ["2 launches, expected 1"] if cell.row.id == "failure" else [])

    def close(self) -> None:
        self.closed = True


def test_session_checks_times_and_cleans_up(tmp_path: Path) -> None:
    from tests.deploy import runner

    root = tmp_path / "deployment"
    root.mkdir()
    stopped: list[str] = []
    with runner.session("demo", "RUNBRIDGE_DEMO_KEEP_UNSET", root) as session:
        session.cleanup.callback(stopped.append, "emulators")
        session.cleanup.callback(stopped.append, "deployment")
        session.stage("deployment started", 2.0)
        session.runner = fake = _Runner()
        session.check(matrix.Cell("prefect-task", matrix.row("success"), "rest"))
        with pytest.raises(AssertionError, match=r"(?s)described.*- 2 launches, expected 1"):
            session.check(matrix.Cell("prefect-task", matrix.row("failure"), "rest"))
    runner.SESSIONS.remove(session)  # not this session's deployment: no terminal summary
    assert fake.closed and stopped == ["deployment", "emulators"] and not root.exists()
    lines = runner.summary_lines([session])
    assert lines[0].startswith("demo matrix: deployment started 2.0 s; session ")
    assert lines[1:] == [
        "  prefect-task/success/rest: 1.5 s pass",
        "  prefect-task/failure/rest: 1.5 s FAIL",
    ]


def test_emulators_per_platform() -> None:
    from tests.deploy import runner

    cells = [
        matrix.Cell("prefect-task", matrix.row(r), p)
        for r, p in [("success", "rest"), ("failure", "rest"), ("flow_restart", "vi")]
        + [("success", "lume")] * 5
    ]
    assert runner.emulators_per_platform(cells) == {"rest": 2, "vi": 1, "lume": 5}
    assert runner.emulators_per_platform(cells, at_most=3, leave_out={"flow_restart"}) == {
        "rest": 2,
        "vi": 1,
        "lume": 3,
    }
    assert runner.emulators_per_platform([]) == {"rest": 1}


# -- orphans -----------------------------------------------------------------------------------
PARENT = """
import sys, threading, time
from pathlib import Path
from tests.deploy.conftest import start_emulator

def start():  # from a thread that ends at once, as the cells' pools do
    server = start_emulator("rest", Path(sys.argv[1]))
    print(server.process.pid, flush=True)

thread = threading.Thread(target=start)
thread.start()
thread.join()
time.sleep(600)
"""


@contextlib.contextmanager
def _session_like(code: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A pytest-like parent process running ``code``, and the first line it prints."""
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        yield parent, parent.stdout.readline().strip()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def _sigkill_outlived_by_none(parent: subprocess.Popen[str], child: Any, timeout: float) -> None:
    import psutil

    parent.send_signal(signal.SIGKILL)  # no teardown runs
    parent.wait(10)
    gone, alive = psutil.wait_procs([child], timeout=timeout)
    assert gone and not alive, f"{child} outlived its SIGKILLed parent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_an_emulator_dies_with_its_sigkilled_session(tmp_path: Path) -> None:
    """A pytest-like parent starts an emulator (from a short-lived thread) and is SIGKILLed:
    no teardown runs, and the emulator is gone all the same."""
    import psutil

    with _session_like(PARENT, str(tmp_path)) as (parent, line):
        emulator = psutil.Process(int(line))
        time.sleep(1.0)  # the thread that started it has ended: the emulator lives on
        assert emulator.is_running() and emulator.status() != psutil.STATUS_ZOMBIE
        assert "emulate" in " ".join(emulator.cmdline())
        _sigkill_outlived_by_none(parent, emulator, timeout=10)


PG_PARENT = """
import time
from tests.deploy import postgres

with postgres.cluster() as cluster:
    print(cluster.directory, flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_postgres_stops_with_its_sigkilled_session() -> None:
    """The cluster's server runs as another user (no parent-death signal survives that):
    ``runuser``, its parent, gets the signal and passes SIGTERM on; the directory left is
    swept by the next cluster."""
    import psutil

    from tests.deploy import postgres

    if postgres.find_bin() is None:
        pytest.skip("PostgreSQL is not installed (see tests/deploy/postgres.py)")
    with _session_like(PG_PARENT) as (parent, line):
        directory = Path(line)
        pid = int((directory / "data" / "postmaster.pid").read_text().split()[0])
        _sigkill_outlived_by_none(parent, psutil.Process(pid), timeout=30)
        assert directory in postgres.sweep(directory.parent) and not directory.exists()


# -- PostgreSQL ---------------------------------------------------------------------------------
def test_a_throwaway_postgres_cluster() -> None:
    """The Airflow deployment's PostgreSQL: started in a temp dir, reachable at its URL, stopped
    and deleted at the end; a cluster whose session is gone is swept by the next one."""
    from tests.deploy import postgres

    if postgres.find_bin() is None:
        pytest.skip("PostgreSQL is not installed (see tests/deploy/postgres.py)")
    psycopg2 = pytest.importorskip("psycopg2")
    with postgres.cluster() as cluster:
        assert cluster.url.startswith("postgresql+psycopg2://postgres@127.0.0.1:")
        conn = psycopg2.connect(host="127.0.0.1", port=cluster.port, user="postgres")
        try:
            cur = conn.cursor()
            cur.execute("select 41 + 1")
            assert cur.fetchone() == (42,)
        finally:
            conn.close()
        directory, server = cluster.directory, cluster.process
        (directory / "session.pid").write_text("999999999")  # as if its session were gone
        assert directory in postgres.sweep(directory.parent)
        assert server.wait(30) is not None
    assert not directory.exists()
