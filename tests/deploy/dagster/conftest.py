"""The Dagster deployment of the reliability matrix, started once per test session.

``dagster_cells`` starts a pool of emulator processes (``runbridge emulate``, one per cell
running at once and platform, all with the session's token), then a real Dagster deployment
(tests/deploy/dagster/deployment.py: instance, code server, web server, daemon) whose processes
hold the token, and hands the tests a :class:`~tests.deploy.dagster.cells.CellRunner` that has
started every selected cell. Everything it started is stopped at the end of the session, also
when a test fails. The pytest process never imports Dagster.

``RUNBRIDGE_DAGSTER_CONCURRENCY`` (default 6) bounds how many cells run at once;
``RUNBRIDGE_DAGSTER_KEEP=1`` keeps the deployment's directory (logs, storage) afterwards. The daemon
is started only when a selected cell needs it (a run the daemon retries).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy import matrix
from tests.deploy.dagster.cells import RETRIED, Cell, CellRunner, EmulatorPool
from tests.deploy.dagster.deployment import DagsterDeployment

TIMINGS: dict[str, Any] = {}
"""What the session measured, for the terminal summary."""


def selected_cells(items: list[pytest.Item]) -> list[Cell]:
    return matrix.selected_cells(items, matrix.DAGSTER)


@pytest.fixture(scope="session")
def dagster_cells(request: pytest.FixtureRequest) -> Iterator[CellRunner]:
    began = time.monotonic()
    cells = selected_cells(request.session.items)
    concurrency = int(os.environ.get("RUNBRIDGE_DAGSTER_CONCURRENCY", "6"))
    per_platform: dict[str, int] = {}
    for cell in cells:
        per_platform[cell.platform] = per_platform.get(cell.platform, 0) + 1
    sizes = {p: max(1, min(concurrency, n)) for p, n in per_platform.items()} or {"rest": 1}
    token = "matrix-dagster-" + secrets.token_hex(12)
    pool = EmulatorPool(sizes, token)
    runner: CellRunner | None = None
    try:
        daemon = any(cell.row.id in RETRIED for cell in cells)
        with DagsterDeployment.running(token=token, daemon=daemon) as deployment:
            TIMINGS["startup_seconds"] = time.monotonic() - began
            TIMINGS["deployment_seconds"] = deployment.startup_seconds
            runner = CellRunner(deployment, pool, concurrency)
            runner.start(cells)
            try:
                yield runner
            finally:
                runner.close()
                TIMINGS["cells"] = len(cells)
                TIMINGS["session_seconds"] = time.monotonic() - began
    finally:
        pool.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS.get("cells"):
        terminalreporter.write_line(
            "dagster matrix: {cells} cells, startup {startup_seconds:.1f} s (deployment "
            "{deployment_seconds:.1f} s), session {session_seconds:.1f} s".format(**TIMINGS)
        )
