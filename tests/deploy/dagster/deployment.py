"""A real Dagster deployment for the matrix: an instance, a code server, a web server, a daemon.

``DagsterDeployment.start(...)`` brings up, in temporary directories and on loopback:

* a ``DAGSTER_HOME`` whose dagster.yaml sets the ``DefaultRunLauncher`` (each run in its own
  run worker process, started by the code server), the ``DefaultRunCoordinator`` (a submitted
  run launches at once), SQLite storage, run retries (``dagster/max_retries`` tag) and run
  monitoring on, telemetry off;
* the code location: ``dagster api grpc`` serving tests/deploy/dagster/deploy_defs.py on a Unix
  socket, with the platform's connection in its environment (run workers inherit it);
* ``dagster-webserver`` on a free loopback port: runs are submitted, terminated and re-executed
  through its GraphQL API, as the UI does;
* ``dagster-daemon run``: run retries after a crashed run worker, run monitoring, sensors
  (left out when no cell needs it).

Every process starts in its own session (process group) with SIGINT restored to its default
(the pytest process may ignore it, and a run worker is interrupted by SIGINT when its run is
terminated), and ``stop()`` kills each group: the code server's group holds the run workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.processes import spawn

DEFS_FILE = Path(__file__).with_name("deploy_defs.py")
LOCATION = "runbridge_deploy"
REPOSITORY = "__repository__"
BIN = Path(sys.executable).parent
START_TIMEOUT = 180.0

INSTANCE_YAML = """\
telemetry:
  enabled: false
storage:
  sqlite:
    base_dir: {storage}
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {storage}
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
run_launcher:
  module: dagster._core.launcher
  class: DefaultRunLauncher
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_retries:
  enabled: true
  max_retries: 0
  retry_on_asset_or_op_failure: false
run_monitoring:
  enabled: true
  poll_interval_seconds: 2
  start_timeout_seconds: 300
  cancel_timeout_seconds: 120
"""

WORKSPACE_YAML = """\
load_from:
  - grpc_server:
      socket: {socket}
      location_name: {location}
"""


def free_port() -> int:
    """A loopback port chosen by the OS (for the web server, which cannot report one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DagsterDeployment:
    """The running deployment; ``graphql`` posts to the web server's GraphQL API."""

    root: Path
    home: Path
    env: dict[str, str]
    web_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_seconds: float = 0.0
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=300.0))

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def running(cls, *, token: str, daemon: bool = True) -> Iterator[DagsterDeployment]:
        """The deployment, its processes given ``token`` as ``RUNBRIDGE_DEPLOY_TOKEN``;
        stopped (every process group killed, files removed) on exit. ``daemon=False`` leaves
        out ``dagster-daemon`` (nothing then retries runs or monitors them: for cells that
        need neither, it saves a process that polls the storage all along)."""
        started = time.monotonic()
        # short: a Unix socket path must fit in 108 bytes
        root = Path(tempfile.mkdtemp(prefix="rb-dg-"))
        home = root / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text(
            INSTANCE_YAML.format(storage=root / "storage"), encoding="utf-8"
        )
        sock = root / "grpc.sock"
        (root / "workspace.yaml").write_text(
            WORKSPACE_YAML.format(socket=sock, location=LOCATION), encoding="utf-8"
        )
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "HOME": str(root),  # anything written under $HOME lands here
            "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1",
            # a launch waits for the run worker to load the code: slow on a busy machine
            "DAGSTER_GRPC_TIMEOUT_SECONDS": "300",
            "RUNBRIDGE_DEPLOY_TOKEN": token,
            "PYTHONUNBUFFERED": "1",
        }
        deployment = cls(root=root, home=home, env=env)
        try:
            deployment._spawn(
                "grpc",
                [
                    str(BIN / "dagster"),
                    "api",
                    "grpc",
                    "--python-file",
                    str(DEFS_FILE),
                    "--socket",
                    str(sock),
                    "--location-name",
                    LOCATION,
                ],
            )
            deployment._wait_for_log("grpc", "Started Dagster code server")
            port = free_port()
            deployment.web_url = f"http://127.0.0.1:{port}"
            deployment._spawn(
                "webserver",
                [
                    str(BIN / "dagster-webserver"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-w",
                    str(root / "workspace.yaml"),
                ],
            )
            if daemon:
                deployment._spawn(
                    "daemon",
                    [str(BIN / "dagster-daemon"), "run", "-w", str(root / "workspace.yaml")],
                )
            deployment._wait_for_web()
            if daemon:
                deployment._wait_for("daemon's run retries", deployment._retries_armed)
            deployment.startup_seconds = time.monotonic() - started
            yield deployment
        finally:
            deployment.stop()

    def _spawn(self, name: str, argv: list[str]) -> None:
        # SIGINT at its default; SIGTERM when the pytest process dies
        self.processes[name] = spawn(
            argv,
            self.root / f"{name}.log",
            append=False,
            death_signal=signal.SIGTERM,
            env=self.env,
            cwd=self.root,
        )

    def log_text(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"dagster {name} exited with {proc.returncode}:\n{self.log_text(name)[-3000:]}"
                )

    def _wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not condition():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Dagster deployment's {what} did not start")
            time.sleep(0.1)

    def _wait_for_log(self, name: str, text: str) -> None:
        self._wait_for(name, lambda: text in self.log_text(name))

    def _wait_for_web(self) -> None:
        def loaded() -> bool:
            try:
                data = self.graphql(
                    "query { workspaceOrError { ... on Workspace { locationEntries {"
                    " name loadStatus locationOrLoadError { __typename } } } } }"
                )
            except httpx.HTTPError:
                return False
            entries = data["workspaceOrError"]["locationEntries"]
            return any(
                e["name"] == LOCATION
                and e["loadStatus"] == "LOADED"
                and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
                for e in entries
            )

        self._wait_for("web server", loaded)

    def _retries_armed(self) -> bool:
        """Whether the daemon's event log consumer has run once: on its first iteration it
        starts reading run failures from the end of the event log, so a run that fails before
        then is never retried (it would miss a cell's crash on a busy machine). Its cursors
        are in the run storage's key-value table."""
        for database in (self.root / "storage").rglob("*.db"):
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{database}?mode=ro", uri=True)
                ) as db:
                    found = db.execute(
                        "SELECT 1 FROM kvs WHERE key LIKE 'EVENT_LOG_CONSUMER_CURSOR-%' LIMIT 1"
                    ).fetchone()
            except sqlite3.Error:
                continue
            if found:
                return True
        return False

    def stop(self) -> None:
        """Kill every process group started (run workers included), then remove the files."""
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._http.close()
        if os.environ.get("RUNBRIDGE_DAGSTER_KEEP") != "1":  # keep: logs, storage to read
            shutil.rmtree(self.root, ignore_errors=True)

    # -- the GraphQL API ---------------------------------------------------------------------
    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One GraphQL request. A read is sent again (up to twice) after a dropped connection:
        the web server, busy, resets kept-alive connections (a cell crashed on it under load);
        a mutation only when it never left (a connect error), so it is never made twice."""
        read = not query.lstrip().startswith("mutation")
        payload = {"query": query, "variables": dict(variables or {})}
        for attempt in range(3):
            try:
                answer = self._http.post(f"{self.web_url}/graphql", json=payload)
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                safe = read or isinstance(exc, httpx.ConnectError)
                if not safe or attempt == 2:
                    raise
                time.sleep(1.0)
        if answer.status_code >= 400:
            raise RuntimeError(
                f"GraphQL answered {answer.status_code}: {answer.text[:1000]}\n"
                f"web server log:\n{self.log_text('webserver')[-3000:]}"
            )
        body = answer.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return dict(body["data"])

    def submit(
        self,
        job: str,
        *,
        run_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Launch ``job`` as the launchpad does (launchRun); returns the Dagster run id."""
        data = self.graphql(
            """
            mutation($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename
                ... on LaunchRunSuccess { run { runId } }
                ... on PythonError { message stack }
                ... on RunConfigValidationInvalid { errors { message } }
                ... on Error { message }
              }
            }""",
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": REPOSITORY,
                        "jobName": job,
                    },
                    "runConfigData": dict(run_config or {}),
                    "executionMetadata": {
                        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]
                    },
                }
            },
        )
        result = data["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun failed: {result}")
        return str(result["run"]["runId"])

    def reexecute(self, parent_run_id: str, strategy: str = "FROM_FAILURE") -> str:
        """Re-execute a run (the UI's "Re-execute from failure"); returns the new run id."""
        data = self.graphql(
            """
            mutation($args: ReexecutionParams!) {
              launchRunReexecution(reexecutionParams: $args) {
                __typename
                ... on LaunchRunSuccess { run { runId } }
                ... on PythonError { message stack }
                ... on Error { message }
              }
            }""",
            {"args": {"parentRunId": parent_run_id, "strategy": strategy}},
        )
        result = data["launchRunReexecution"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRunReexecution failed: {result}")
        return str(result["run"]["runId"])

    def terminate(self, *run_ids: str) -> None:
        """Terminate runs as the UI's Terminate does (SAFE_TERMINATE: the run worker is
        interrupted, not killed)."""
        data = self.graphql(
            """
            mutation($ids: [String!]!) {
              terminateRuns(runIds: $ids, terminatePolicy: SAFE_TERMINATE) {
                __typename
                ... on TerminateRunsResult { terminateRunResults {
                  __typename ... on Error { message } } }
                ... on PythonError { message }
              }
            }""",
            {"ids": list(run_ids)},
        )
        result = data["terminateRuns"]
        if result["__typename"] != "TerminateRunsResult":
            raise RuntimeError(f"terminateRuns failed: {result}")
        failed = [
            r for r in result["terminateRunResults"] if r["__typename"] != "TerminateRunSuccess"
        ]
        if failed:
            raise RuntimeError(f"terminateRuns failed: {failed}")

    def run(self, run_id: str) -> dict[str, Any]:
        """The run's status, tags and the ids of the runs it spawned (retries, re-executions)."""
        data = self.graphql(
            """
            query($id: ID!) {
              runOrError(runId: $id) {
                __typename
                ... on Run { runId status rootRunId parentRunId tags { key value } }
              }
            }""",
            {"id": run_id},
        )
        run = data["runOrError"]
        if run["__typename"] != "Run":
            raise RuntimeError(f"no run {run_id}: {run}")
        return dict(run)

    def runs_of_root(self, root_run_id: str) -> list[dict[str, Any]]:
        """The run's retries and re-executions, newest first, then the run itself."""
        data = self.graphql(
            """
            query($root: String!) {
              runsOrError(filter: {tags: [{key: "dagster/root_run_id", value: $root}]}) {
                ... on Runs { results { runId status parentRunId } }
              }
            }""",
            {"root": root_run_id},
        )
        children = [r for r in data["runsOrError"]["results"] if r["runId"] != root_run_id]
        root = self.run(root_run_id)
        return [*children, {k: root[k] for k in ("runId", "status", "parentRunId")}]

    def process_tree(self) -> set[int]:
        """The pids of the deployment's processes and all their descendants (run workers)."""
        import psutil

        pids: set[int] = set()
        for proc in self.processes.values():
            try:
                parent = psutil.Process(proc.pid)
                pids.add(parent.pid)
                pids.update(child.pid for child in parent.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return pids

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's event log: each event's type, message, step and (step failures) error."""
        data = self.graphql(
            """
            query($id: ID!) {
              logsForRun(runId: $id, limit: 5000) {
                __typename
                ... on EventConnection { events {
                  __typename
                  ... on MessageEvent { message stepKey level }
                  ... on ExecutionStepFailureEvent { error { message } }
                  ... on EngineEvent { metadataEntries { label
                    ... on TextMetadataEntry { text } } }
                } }
              }
            }""",
            {"id": run_id},
        )
        logs = data["logsForRun"]
        if logs["__typename"] != "EventConnection":
            raise RuntimeError(f"no logs for {run_id}: {logs}")
        return list(logs["events"])

    def wait_finished(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll until the run is SUCCESS, FAILURE or CANCELED; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in FINISHED:
                return run
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout} s")
            time.sleep(POLL)


FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
POLL = 0.5
"""Seconds between two reads of a run through the web server (each costs it CPU)."""
