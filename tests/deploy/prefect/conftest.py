"""The Prefect deployment of the reliability matrix, started once per test session.

``prefect_cells`` starts a pool of emulator processes (``runbridge emulate``, one saved
``RunbridgeCredentials`` block each), a real Prefect deployment (deployment.py: ``prefect server
start`` on a free loopback port, a process work pool, a ``prefect worker start`` process, the
matrix flows deployed from local source), and yields a :class:`tests.deploy.runner.Session`
whose runner is a :class:`~tests.deploy.prefect.cells.CellRunner` that has started every
selected cell. All of it is stopped at the end of the session, also when a test fails.

Prefect's home, database, result storage and logs go to a temporary directory, set in the
environment (for the deployment's processes) and as settings (for this process's client).
``RUNBRIDGE_PREFECT_CONCURRENCY`` (default 16: the CI rows all at once) bounds how many cells
run at once (and so the emulators per platform); ``RUNBRIDGE_PREFECT_KEEP=1`` keeps the
directory after the session.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import runner
from tests.deploy.prefect.cells import DISRUPTIVE, CellRunner, EmulatorPool, selected_cells
from tests.deploy.prefect.deployment import PrefectDeployment, prefect_env


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_cells(request: pytest.FixtureRequest) -> Iterator[runner.Session]:
    cells = selected_cells(request.session.items)
    concurrency = int(os.environ.get("RUNBRIDGE_PREFECT_CONCURRENCY", "16"))
    # an emulator per cell that runs at once (flow_restart runs alone, after the others)
    counts = runner.emulators_per_platform(cells, leave_out=DISRUPTIVE)
    size = max(1, min(concurrency, max(counts.values())))
    root = Path(tempfile.mkdtemp(prefix="runbridge-deploy-prefect-"))
    with runner.session("prefect", "RUNBRIDGE_PREFECT_KEEP", root) as session:
        deployment = PrefectDeployment(root)
        env = prefect_env(root, deployment.api_url)
        session.cleanup.callback(_restore_env, {name: os.environ.get(name) for name in env})
        os.environ.update(env)
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_HOME,
            PREFECT_RESULTS_LOCAL_STORAGE_PATH,
            temporary_settings,
        )

        updates: dict[Any, Any] = {
            PREFECT_API_URL: deployment.api_url,
            PREFECT_HOME: env["PREFECT_HOME"],
            PREFECT_RESULTS_LOCAL_STORAGE_PATH: env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"],
        }
        session.cleanup.enter_context(temporary_settings(updates=updates))
        pool = EmulatorPool(sorted(counts), size, root)
        session.cleanup.callback(pool.stop)
        session.cleanup.callback(deployment.stop)
        deployment.start()
        session.stage("server up", deployment.started_in)
        deployment.deploy()
        pool.save_blocks()
        deployment.wait_worker()
        session.stage("ready (emulators, flows deployed, worker polling)")
        cell_runner = CellRunner(deployment, pool, concurrency=min(len(cells), concurrency) or 1)
        session.runner = cell_runner
        cell_runner.submit_all(cells)
        yield session
