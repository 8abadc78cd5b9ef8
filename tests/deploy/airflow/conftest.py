"""The Airflow deployment of the reliability matrix, started once per test session.

``airflow_cells`` starts a pool of emulator processes (``runbridge emulate``, one Airflow
connection each), then a real Airflow deployment (tests/deploy/airflow/deployment.py) whose
processes get those connections as ``AIRFLOW_CONN_...`` variables and whose dags folder holds
dags/runbridge_matrix.py, and hands the tests a :class:`~tests.deploy.airflow.cells.CellRunner`.
Everything it started is stopped at the end of the session, also when a test fails. The
pytest process never imports Airflow.

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
from typing import Any

import pytest

from tests.deploy.airflow.cells import CellRunner, EmulatorPool, selected_cells
from tests.deploy.airflow.deployment import AirflowDeployment

DAG_FILE = Path(__file__).parent / "dags" / "runbridge_matrix.py"
DAG_IDS = [
    f"rb_{kind}{suffix}"
    for kind in ("operator", "deferrable", "sensor")
    for suffix in ("", "_retry")
]

TIMINGS: dict[str, Any] = {}
"""What the session measured, for the terminal summary."""


@pytest.fixture(scope="session")
def airflow_cells(request: pytest.FixtureRequest) -> Iterator[CellRunner]:
    began = time.monotonic()
    cells = selected_cells(request.session.items)
    concurrency = int(os.environ.get("RUNBRIDGE_AIRFLOW_CONCURRENCY", "12"))
    per_platform: dict[str, int] = {}
    for cell in cells:
        per_platform[cell.platform] = per_platform.get(cell.platform, 0) + 1
    # emulators per platform: enough for its share of the cells running at once (the cells
    # are submitted with the platforms interleaved), never more than it has cells
    share = max(2, -(-concurrency // max(1, len(per_platform))) + 1)
    size = max(1, min(share, max(per_platform.values(), default=1)))
    root = Path(tempfile.mkdtemp(prefix="runbridge-deploy-airflow-"))
    pool: EmulatorPool | None = None
    deployment: AirflowDeployment | None = None
    runner: CellRunner | None = None
    try:
        pool = EmulatorPool(sorted(per_platform) or ["rest"], size)
        deployment = AirflowDeployment(root, connections=pool.connections())
        deployment.dags.mkdir(parents=True)
        shutil.copy(DAG_FILE, deployment.dags)
        deployment.start()
        deployment.wait_healthy(time.monotonic() + 120, DAG_IDS)
        TIMINGS["deployment"] = deployment.started_in
        TIMINGS["ready"] = time.monotonic() - began
        runner = CellRunner(deployment, pool, concurrency=concurrency)
        runner.submit_all(cells)
        yield runner
    finally:
        if runner is not None:
            runner.close()
            TIMINGS["cells"] = [
                (r.cell.id, r.seconds, not r.problems and not r.crashed) for r in runner.results
            ]
        if deployment is not None:
            deployment.stop()
        if pool is not None:
            pool.stop()
        TIMINGS["total"] = time.monotonic() - began
        if os.environ.get("RUNBRIDGE_AIRFLOW_KEEP"):
            TIMINGS["kept"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    write = terminalreporter.write_line
    write(
        f"airflow matrix: deployment started in {TIMINGS.get('deployment', 0):.1f} s "
        f"(ready with emulators and DAGs in {TIMINGS.get('ready', 0):.1f} s); "
        f"session fixture total {TIMINGS.get('total', 0):.1f} s"
    )
    for cell_id, seconds, passed in TIMINGS.get("cells", []):
        write(f"  {cell_id}: {seconds:.1f} s {'pass' if passed else 'FAIL'}")
    if "kept" in TIMINGS:
        write(f"  kept: {TIMINGS['kept']}")
