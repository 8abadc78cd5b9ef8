"""The Dagster deployment of the reliability matrix, started once per test session.

``dagster_cells`` starts a pool of emulator processes (``runbridge emulate``, one per cell
running at once and platform, all with the session's token), then a real Dagster deployment
(tests/deploy/dagster/deployment.py: instance, code server, web server, daemon) whose processes
hold the token, and yields a :class:`tests.deploy.runner.Session` whose runner is a
:class:`~tests.deploy.dagster.cells.CellRunner` that has started every selected cell.
Everything it started is stopped at the end of the session, also when a test fails. The pytest
process never imports Dagster.

``RUNBRIDGE_DAGSTER_CONCURRENCY`` (default 6) bounds how many cells run at once. The daemon is
started only when a selected cell needs it (a run the daemon retries).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from tests.deploy import matrix, runner
from tests.deploy.dagster.cells import RETRIED, Cell, CellRunner, EmulatorPool
from tests.deploy.dagster.deployment import DagsterDeployment


def selected_cells(items: list[pytest.Item]) -> list[Cell]:
    return matrix.selected_cells(items, matrix.DAGSTER)


@pytest.fixture(scope="session")
def dagster_cells(request: pytest.FixtureRequest) -> Iterator[runner.Session]:
    cells = selected_cells(request.session.items)
    concurrency = int(os.environ.get("RUNBRIDGE_DAGSTER_CONCURRENCY", "6"))
    sizes = runner.emulators_per_platform(cells, at_most=concurrency)
    token = "matrix-dagster-" + secrets.token_hex(12)
    with runner.session("dagster") as session:
        pool = EmulatorPool(sizes, token)
        session.cleanup.callback(pool.stop)
        daemon = any(cell.row.id in RETRIED for cell in cells)
        deployment = session.cleanup.enter_context(
            DagsterDeployment.running(token=token, daemon=daemon)
        )
        session.stage("deployment started", deployment.startup_seconds)
        session.stage("ready with emulators")
        cell_runner = CellRunner(deployment, pool, concurrency)
        session.runner = cell_runner
        cell_runner.start(cells)
        yield session
