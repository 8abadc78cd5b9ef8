"""The matrix's own plumbing, with no orchestrator: the emulator process, the control fixture,
``check`` and the cell recording (a runbridge client plays the column)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert len({r.id for r in matrix.ROWS}) == len(matrix.ROWS) == 21
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
    assert "| `clear` | not run | not run | not run | n/a | n/a | n/a | n/a |" in rest
    lume = text.split("## lume", 1)[1].split("## Failures", 1)[0]
    assert "| `run_timeout` | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in lume
    assert "### rest / `failure` / prefect-task" in text and "the scripted failure" in text
