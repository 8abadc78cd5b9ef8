"""The Prefect deployment of the reliability matrix, started once per test session.

``prefect_cells`` starts a pool of emulator processes (``runbridge emulate``, one saved
``RunbridgeCredentials`` block each), a real Prefect deployment (deployment.py: ``prefect server
start`` on a free loopback port, a process work pool, a ``prefect worker start`` process, the
matrix flows deployed from local source), and hands the tests a
:class:`~tests.deploy.prefect.cells.CellRunner` that has started every selected cell. All of it
is stopped at the end of the session, also when a test fails.

Prefect's home, database, result storage and logs go to a temporary directory, set in the
environment (for the deployment's processes) and as settings (for this process's client).
``RUNBRIDGE_PREFECT_CONCURRENCY`` (default 32) bounds how many cells run at once (and so the
emulators per platform); ``RUNBRIDGE_PREFECT_KEEP=1`` keeps the directory after the session.
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

from tests.deploy.prefect.cells import DISRUPTIVE, CellRunner, EmulatorPool, selected_cells
from tests.deploy.prefect.deployment import PrefectDeployment, prefect_env

TIMINGS: dict[str, Any] = {}
"""What the session measured, for the terminal summary."""


@pytest.fixture(scope="session")
def prefect_cells(request: pytest.FixtureRequest) -> Iterator[CellRunner]:
    began = time.monotonic()
    cells = selected_cells(request.session.items)
    concurrency = int(os.environ.get("RUNBRIDGE_PREFECT_CONCURRENCY", "32"))
    per_platform: dict[str, int] = {}
    for cell in cells:  # an emulator per cell that runs at once (flow_restart runs alone)
        if cell.row.id not in DISRUPTIVE:
            per_platform[cell.platform] = per_platform.get(cell.platform, 0) + 1
    size = max(1, min(concurrency, max(per_platform.values(), default=1)))
    root = Path(tempfile.mkdtemp(prefix="runbridge-deploy-prefect-"))
    deployment = PrefectDeployment(root)
    saved = {name: os.environ.get(name) for name in prefect_env(root, deployment.api_url)}
    os.environ.update(prefect_env(root, deployment.api_url))
    pool: EmulatorPool | None = None
    runner: CellRunner | None = None
    try:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_HOME,
            PREFECT_RESULTS_LOCAL_STORAGE_PATH,
            temporary_settings,
        )

        env = prefect_env(root, deployment.api_url)
        updates: dict[Any, Any] = {
            PREFECT_API_URL: deployment.api_url,
            PREFECT_HOME: env["PREFECT_HOME"],
            PREFECT_RESULTS_LOCAL_STORAGE_PATH: env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"],
        }
        with temporary_settings(updates=updates):
            pool = EmulatorPool(sorted(per_platform) or ["rest"], size, root)
            deployment.start()
            TIMINGS["server"] = deployment.started_in
            deployment.deploy()
            pool.save_blocks()
            deployment.wait_worker()
            TIMINGS["ready"] = time.monotonic() - began
            runner = CellRunner(deployment, pool, concurrency=min(len(cells), concurrency) or 1)
            runner.submit_all(cells)
            yield runner
    finally:
        if runner is not None:
            runner.close()
            TIMINGS["cells"] = [
                (r.cell.id, r.seconds, not r.problems and not r.crashed) for r in runner.results
            ]
        deployment.stop()
        if pool is not None:
            pool.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        TIMINGS["total"] = time.monotonic() - began
        if os.environ.get("RUNBRIDGE_PREFECT_KEEP"):
            TIMINGS["kept"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    write = terminalreporter.write_line
    write(
        f"prefect matrix: server up in {TIMINGS.get('server', 0):.1f} s, deployment ready "
        f"(emulators, flows deployed, worker polling) in {TIMINGS.get('ready', 0):.1f} s; "
        f"session fixture total {TIMINGS.get('total', 0):.1f} s"
    )
    for cell_id, seconds, passed in TIMINGS.get("cells", []):
        write(f"  {cell_id}: {seconds:.1f} s {'pass' if passed else 'FAIL'}")
    if "kept" in TIMINGS:
        write(f"  kept: {TIMINGS['kept']}")
