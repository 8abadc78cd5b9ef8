"""The Airflow deployment of the reliability matrix, started once per test session.

``airflow_cells`` starts a pool of emulator processes (``runbridge emulate``, one Airflow
connection each), then a real Airflow deployment (tests/deploy/airflow/deployment.py) whose
processes get those connections as ``AIRFLOW_CONN_...`` variables and whose dags folder holds
dags/runbridge_matrix.py, and yields a :class:`tests.deploy.runner.Session` whose runner is a
:class:`~tests.deploy.airflow.cells.CellRunner`. Everything it started is stopped at the end of
the session, also when a test fails. The pytest process never imports Airflow.

``RUNBRIDGE_AIRFLOW_DB`` picks the deployment's database: ``sqlite`` (the default: the quick
rows measured faster on it, see docs/testing.md) or ``postgres`` (a throwaway cluster started
for the session, tests/deploy/postgres.py; what ``tools/reliability.py`` uses for the full
matrix: SQLite's "database is locked" once killed the triggerer under 200 tasks).
``RUNBRIDGE_AIRFLOW_CONCURRENCY`` (default 12) bounds how many cells run at once (and so the
emulators per platform); ``RUNBRIDGE_AIRFLOW_KEEP=1`` keeps the deployment's directory (logs,
database) after the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import postgres, runner
from tests.deploy.airflow.cells import CellRunner, EmulatorPool, selected_cells
from tests.deploy.airflow.deployment import AirflowDeployment

DAG_FILE = Path(__file__).parent / "dags" / "runbridge_matrix.py"
DAG_IDS = [
    f"rb_{kind}{suffix}"
    for kind in ("operator", "deferrable", "sensor")
    for suffix in ("", "_retry")
]
BACKENDS = ("sqlite", "postgres")
DEFAULT_BACKEND = "sqlite"


def backend() -> str:
    """``RUNBRIDGE_AIRFLOW_DB``: ``sqlite`` (default) or ``postgres``."""
    chosen = os.environ.get("RUNBRIDGE_AIRFLOW_DB", "").strip().lower() or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        raise pytest.UsageError(
            f"RUNBRIDGE_AIRFLOW_DB={chosen!r}: expected one of {', '.join(BACKENDS)}"
        )
    return chosen


@pytest.fixture(scope="session")
def airflow_cells(request: pytest.FixtureRequest) -> Iterator[runner.Session]:
    cells = selected_cells(request.session.items)
    concurrency = int(os.environ.get("RUNBRIDGE_AIRFLOW_CONCURRENCY", "12"))
    chosen = backend()
    counts = runner.emulators_per_platform(cells)
    # emulators per platform: enough for its share of the cells running at once (the cells
    # are submitted with the platforms interleaved), never more than it has cells
    share = max(2, -(-concurrency // len(counts)) + 1)
    size = max(1, min(share, max(counts.values())))
    root = Path(tempfile.mkdtemp(prefix="runbridge-deploy-airflow-"))
    with runner.session("airflow", "RUNBRIDGE_AIRFLOW_KEEP", root) as session:
        session.notes.append(f"database: {chosen}")
        database = None
        if chosen == "postgres":
            try:
                cluster = session.cleanup.enter_context(postgres.cluster())
            except postgres.PostgresUnavailable as exc:
                pytest.skip(f"RUNBRIDGE_AIRFLOW_DB=postgres: {exc}")
            database = cluster.url
            session.stage("postgres started")
        pool = EmulatorPool(sorted(counts), size)
        session.cleanup.callback(pool.stop)
        deployment = AirflowDeployment(root, connections=pool.connections(), database=database)
        session.cleanup.callback(deployment.stop)
        deployment.dags.mkdir(parents=True)
        shutil.copy(DAG_FILE, deployment.dags)
        deployment.start()
        deployment.wait_healthy(time.monotonic() + 120, DAG_IDS)
        session.stage("deployment started", deployment.started_in)
        session.stage("ready with emulators and DAGs")
        cell_runner = CellRunner(deployment, pool, concurrency=concurrency)
        session.runner = cell_runner
        cell_runner.submit_all(cells)
        yield session
