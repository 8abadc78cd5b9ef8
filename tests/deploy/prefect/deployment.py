"""A real Prefect deployment for the reliability matrix: a ``prefect server start`` process on a
free loopback port, a process work pool, a ``prefect worker start`` process, and the matrix
flows (flows.py) deployed from local source, as a user deploys them.

Everything lives in one temporary directory (Prefect's home, its SQLite database, result
storage, logs); every process is started in its own session and killed (its whole process
group) by :meth:`PrefectDeployment.stop`, also when starting failed half-way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.processes import spawn

FLOWS_DIR = Path(__file__).resolve().parent
POOL = "rb-matrix"
FLOWS = {"prefect-task": "matrix_task", "prefect-job": "matrix_job"}
"""Column -> the flow (in flows.py) that runs it."""


class DeploymentError(RuntimeError):
    """The deployment could not be started (with the processes' output)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_env(root: Path, api_url: str) -> dict[str, str]:
    """The environment of every Prefect process of the deployment (and of the pytest process's
    Prefect client): nothing under the real $HOME."""
    home = root / "home"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_MEMO_STORE_PATH": str(home / "memo_store.toml"),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "PREFECT_API_SERVICES_LATE_RUNS_ENABLED": "false",
        "PREFECT_API_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }


class PrefectDeployment:
    """Server, work pool, worker and deployments; :meth:`start` then :meth:`deploy`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, **prefect_env(root, self.api_url), "NO_COLOR": "1"}
        self.env.pop("PREFECT_PROFILES_PATH", None)
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.deployments: dict[str, Any] = {}
        """Column -> deployment id."""
        self.started_in = 0.0

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        # SIGINT at its default; SIGTERM when the pytest process dies
        return spawn(
            [sys.executable, "-m", "prefect", *args],
            self.root / f"{name}.log",
            death_signal=signal.SIGTERM,
            env=self.env,
        )

    def output(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self, timeout: float = 120.0) -> None:
        """Start the server and one worker; return once the API answers."""
        began = time.monotonic()
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        self.server = self._spawn(
            "server", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.server.poll() is not None:
                raise DeploymentError(f"prefect server exited: {self.output('server')}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DeploymentError(f"prefect server did not answer: {self.output('server')}")
            time.sleep(0.2)
        self.create_pool()
        self.start_worker()
        self.started_in = time.monotonic() - began

    def create_pool(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate

        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)

    def start_worker(self) -> subprocess.Popen[bytes]:
        """A process worker on the pool (it makes the pool if it does not exist)."""
        n = len(self.workers)
        worker = self._spawn(
            f"worker{n}",
            "worker",
            "start",
            "--pool",
            POOL,
            "--type",
            "process",
            "--name",
            f"rb-matrix-worker-{n}",
        )
        self.workers.append(worker)
        return worker

    def wait_worker(self, timeout: float = 60.0) -> None:
        """Until the newest worker has polled the pool (its first heartbeat)."""
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + timeout
        name = f"rb-matrix-worker-{len(self.workers) - 1}"
        with get_client(sync_client=True) as client:
            while True:
                worker = self.workers[-1]
                if worker.poll() is not None:
                    raise DeploymentError(f"the worker exited: {self.output(name[10:])}")
                try:
                    seen = client.read_workers_for_work_pool(POOL)
                except Exception:
                    seen = []
                if any(w.name == name for w in seen):
                    return
                if time.monotonic() > deadline:
                    raise DeploymentError(f"the worker never polled: {self.output(name[10:])}")
                time.sleep(0.3)

    def deploy(self) -> None:
        """Deploy the two matrix flows from this directory onto the process pool."""
        from prefect import flow

        for column, entry in FLOWS.items():
            loaded = flow.from_source(source=str(FLOWS_DIR), entrypoint=f"flows.py:{entry}")
            self.deployments[column] = loaded.deploy(  # type: ignore[union-attr]
                name=f"matrix-{column}", work_pool_name=POOL, print_next_steps=False
            )

    def flow_run_pids(self, flow_run_id: Any) -> list[int]:
        """The processes running a flow run (found by the ``PREFECT__FLOW_RUN_ID`` the worker
        gives them)."""
        needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        for process in [*self.workers, self.server]:
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except OSError:
                continue
        for process in [*self.workers, self.server]:
            if process is None:
                continue
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except OSError:
                    pass
                process.wait(timeout=5)
