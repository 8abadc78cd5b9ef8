"""A real Airflow 3.3 deployment on loopback, for the reliability matrix.

:class:`AirflowDeployment` runs ``airflow db migrate`` and then four separate processes from
this checkout's interpreter: ``airflow scheduler`` (LocalExecutor: SQLite is accepted by 3.3
for it), ``airflow triggerer``, ``airflow dag-processor`` and ``airflow api-server`` on a port
chosen by the OS, all with ``AIRFLOW_HOME``, ``HOME``, the dags folder and the SQLite database
in one temporary directory (or a PostgreSQL database: ``database``, tests/deploy/postgres.py).
Each process gets SIGTERM if the pytest process dies (tests/deploy/processes.py). The pytest process never imports Airflow: it drives the
deployment through the api-server's public REST API (``/api/v2``) with a JWT from the simple
auth manager (``GET /auth/token``, which 3.3 serves when ``simple_auth_manager_all_admins``
is on), and through signals to the processes it started.

Every process is started in its own session (process group), so :meth:`stop` ends each one
with its children (the LocalExecutor's workers, the triggerer's trigger runner) by group id,
never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.deploy.processes import spawn

VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")

TRIGGERER_HEARTBEAT = 1
"""``[triggerer] job_heartbeat_sec``: how often a triggerer proves it is alive."""
TRIGGERER_HEALTH_THRESHOLD = 8
"""``[triggerer] triggerer_health_check_threshold``: a triggerer silent for longer loses its
triggers to a live one (``trigger_moved``). Low, so that cell is short; high enough that a
busy 2-core machine does not move triggers by accident."""

SQLITE_BUSY_TIMEOUT = 20
"""Seconds a process waits for SQLite's write lock. sqlite3's default, 5 s, is exceeded on a
busy 2-core machine ("database is locked"); 60 s was too long: the triggerer's supervisor,
blocked that long in a write, took its trigger runner for deadlocked (threshold 30 s) and
skipped its heartbeat, so its triggers stalled."""
SQLITE_ARGS = f"""# connect_args of the deployment's SQLite engines (sync and async)
SYNC = {{"timeout": {SQLITE_BUSY_TIMEOUT}}}
ASYNC = {{"timeout": {SQLITE_BUSY_TIMEOUT}}}
"""

API_ATTEMPTS = 6
PAGE = 1000
"""Task instances read per request by the watch (``[api] maximum_page_limit``)."""

TERMINAL = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class DeploymentError(RuntimeError):
    """The deployment did not do what a test needed; the message carries the process logs."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def airflow_command(*args: str) -> list[str]:
    """``airflow ARGS`` with SIGINT back at its default: some orchestrators leave it ignored in
    the pytest process, and an ignored signal is inherited across exec (a ``preexec_fn`` is
    not safe in a process with threads)."""
    restore = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", restore, AIRFLOW, *args]


@dataclass
class Process:
    """One started process (the leader of its own process group) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    job_id: int | None = None
    """The Airflow job id of a triggerer (its row in the ``job`` table)."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL what is left after ``grace`` seconds."""
        if self.alive():
            self.signal_group(signal.SIGCONT)  # a stopped group cannot act on SIGTERM
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        self.signal_group(signal.SIGKILL)  # the leader's children (workers, runners) too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class AirflowDeployment:
    """Scheduler, triggerer, dag-processor and api-server over one database: SQLite in
    ``root`` unless ``database`` is given (a SQLAlchemy URL, e.g. tests/deploy/postgres.py's)."""

    root: Path
    connections: Mapping[str, str] = field(default_factory=dict)
    """``AIRFLOW_CONN_<ID>`` values (JSON), set in every process's environment."""
    database: str | None = None
    parallelism: int = 24
    processes: dict[str, Process] = field(default_factory=dict)
    started_in: float = 0.0
    port: int = 0
    _token: str | None = None
    _http: httpx.Client | None = None
    _triggerers: int = 0
    _log_ports: dict[str, int] = field(default_factory=dict)
    _reads: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(4))
    _writes: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))
    _watch: TaskInstanceWatch | None = None
    _watch_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def dags(self) -> Path:
        return self.root / "dags"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- processes -----------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """The processes' environment: the caller's without any Airflow setting (another test
        folder may have pointed AIRFLOW_HOME elsewhere), then this deployment's."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW_", "AIRFLOW__")) and not k.startswith("AIRFLOW_CONN_")
        }
        secret = "runbridge-deploy-airflow-" + "x" * 48
        base.update(
            {
                "HOME": str(self.root / "userhome"),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "0",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                **self._database_env(),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(self.root / "pylib"), os.environ.get("PYTHONPATH")) if p
                ),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__MAXIMUM_PAGE_LIMIT": str(PAGE),
                "AIRFLOW__API__SECRET_KEY": secret,
                "AIRFLOW__API_AUTH__JWT_SECRET": secret,
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._log_port("worker")),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": str(TRIGGERER_HEARTBEAT),
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(
                    TRIGGERER_HEALTH_THRESHOLD
                ),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                # a task's calls to the execution API wait for SQLite's lock like the rest
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
                # parse the one DAG file once: a re-parse that times out on a loaded machine
                # deactivates its DAGs (a DAG run trigger then answers 404)
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
                "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "300",
                "AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD": "600",
            }
        )
        base.update({f"AIRFLOW_CONN_{k.upper()}": v for k, v in self.connections.items()})
        base.update(extra)
        return base

    @property
    def backend(self) -> str:
        """``sqlite`` or the database URL's dialect (``postgresql``)."""
        return (self.database or "sqlite").split(":", 1)[0].split("+", 1)[0]

    def _database_env(self) -> dict[str, str]:
        if self.database:  # Airflow derives the async URL (postgresql+asyncpg) from this one
            return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database}
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            # SQLite allows one writer at a time: wait for the lock (sqlite3's default is
            # 5 s, which a busy 2-core machine exceeds: "database is locked")
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "rb_sqlite_args.SYNC",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "rb_sqlite_args.ASYNC",
        }

    def _log_port(self, what: str) -> int:
        if what not in self._log_ports:
            self._log_ports[what] = free_port()
        return self._log_ports[what]

    def spawn(self, name: str, *args: str, **env: str) -> Process:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        # SIGTERM when the pytest process dies: the process stops its own children
        child = spawn(
            airflow_command(*args),
            log,
            death_signal=signal.SIGTERM,
            env=self.env(**env),
            cwd=self.root,
        )
        process = Process(name, child, log)
        self.processes[name] = process
        return process

    def start(self, timeout: float = 240.0) -> None:
        """Migrate the database, start the four processes, wait until all are healthy and
        every DAG file in the dags folder is parsed."""
        began = time.monotonic()
        (self.root / "userhome").mkdir(parents=True, exist_ok=True)
        (self.root / "pylib").mkdir(parents=True, exist_ok=True)
        (self.root / "pylib" / "rb_sqlite_args.py").write_text(SQLITE_ARGS)
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        migrate = subprocess.run(
            airflow_command("db", "migrate"),
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        if migrate.returncode:
            raise DeploymentError(
                f"airflow db migrate failed ({migrate.returncode}):\n"
                + migrate.stdout.decode(errors="replace")[-3000:]
                + migrate.stderr.decode(errors="replace")[-3000:]
            )
        self.spawn("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port))
        self.spawn("scheduler", "scheduler")
        self.spawn("dag-processor", "dag-processor")
        first = self._spawn_triggerer()
        self.wait_healthy(deadline=began + timeout)
        first.job_id = self._new_triggerer_job(set(), deadline=began + timeout)
        self.started_in = time.monotonic() - began

    def _spawn_triggerer(self) -> Process:
        self._triggerers += 1
        name = "triggerer" if self._triggerers == 1 else f"triggerer-{self._triggerers}"
        return self.spawn(
            name, "triggerer", AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port())
        )

    def start_triggerer(self, timeout: float = 120.0) -> Process:
        """Start one more triggerer (``triggerer-2``...), with its own log port; return once
        it runs, with its job id."""
        known = {int(job["id"]) for job in self.triggerer_jobs()}
        process = self._spawn_triggerer()
        process.job_id = self._new_triggerer_job(known, deadline=time.monotonic() + timeout)
        return process

    def triggerer_jobs(self) -> list[dict[str, Any]]:
        """Every triggerer job the database knows (running or ended)."""
        answer = self.api("GET", "/jobs", params={"job_type": "TriggererJob", "limit": 100})
        return list(answer.json()["jobs"])

    def _new_triggerer_job(self, known: set[int], deadline: float) -> int:
        found: list[int] = []

        def started() -> bool:
            found[:] = [
                int(job["id"])
                for job in self.triggerer_jobs()
                if int(job["id"]) not in known and job.get("state") == "running"
            ]
            return bool(found)

        self._until(deadline, "a new triggerer job", started)
        return max(found)

    def triggerers(self) -> list[Process]:
        """The triggerer processes still alive."""
        return [p for n, p in self.processes.items() if n.startswith("triggerer") and p.alive()]

    def triggerer_for_job(self, job_id: int) -> Process | None:
        return next((p for p in self.triggerers() if p.job_id == job_id), None)

    def wait_healthy(self, deadline: float, dag_ids: Iterable[str] = ()) -> None:
        self._until(deadline, "the deployment to be healthy", self._healthy)
        for dag_id in dag_ids:
            self.wait_dag(dag_id, deadline)

    def _healthy(self) -> bool:
        for process in self.processes.values():
            if not process.alive() and process.name in ("api-server", "scheduler"):
                raise DeploymentError(f"{process.name} exited:\n{process.tail()}")
        try:
            health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def wait_dag(self, dag_id: str, deadline: float) -> None:
        def parsed() -> bool:
            answer = self.api("GET", f"/dags/{dag_id}", ok=(200, 404))
            return answer.status_code == 200

        self._until(deadline, f"DAG {dag_id} to be parsed", parsed)
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        if self._http is not None:
            self._http.close()
            self._http = None
        for process in reversed(list(self.processes.values())):
            process.stop()

    def logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {p.name} (pid {p.pid}, {'alive' if p.alive() else 'exited'}) ---\n"
            + p.tail(lines)
            for p in self.processes.values()
        )

    def _until(
        self, deadline: float, what: str, ready: Callable[[], bool], every: float = 0.5
    ) -> None:
        while not ready():
            if time.monotonic() > deadline:
                raise DeploymentError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(every)

    # -- the REST API --------------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=f"{self.url}/api/v2",
                timeout=60,
                limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
            )
        return self._http

    def token(self) -> str:
        """A JWT from the simple auth manager (everyone is admin in this deployment)."""
        if self._token is None:
            answer = httpx.get(f"{self.url}/auth/token", timeout=30)
            answer.raise_for_status()
            self._token = str(answer.json()["access_token"])
        return self._token

    def api(
        self, method: str, path: str, *, ok: Iterable[int] = (200, 201, 204), **kwargs: Any
    ) -> httpx.Response:
        """One call of the REST API. SQLite takes one writer at a time, so writes go one by
        one; a 5xx ("database is locked") or a timeout is tried again (every call made here
        is idempotent: a DAG run is triggered with its own id, and 409 means it exists)."""
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {self.token()}"}
        gate = self._reads if method == "GET" else self._writes
        last = ""
        for attempt in range(API_ATTEMPTS):
            if attempt:
                time.sleep(min(2.0**attempt, 10.0))
            try:
                with gate:
                    answer = self.http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if answer.status_code >= 500:
                last = f"{answer.status_code}: {answer.text[:500]}"
                continue
            if answer.status_code not in tuple(ok):
                raise DeploymentError(
                    f"{method} /api/v2{path} answered {answer.status_code}: {answer.text[:2000]}"
                )
            return answer
        raise DeploymentError(f"{method} /api/v2{path} failed {API_ATTEMPTS} times; last: {last}")

    def trigger(self, dag_id: str, conf: Mapping[str, Any], run_id: str | None = None) -> str:
        """Trigger a DAG run with ``conf`` (and ``run_id``, default a new unique one)."""
        run_id = run_id or f"rb__{time.time_ns()}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)}
        self.api("POST", f"/dags/{dag_id}/dagRuns", json=body, ok=(200, 409))
        return run_id

    # -- task instances, watched together ---------------------------------------------------
    def watch(self) -> TaskInstanceWatch:
        """The one poller of every task instance (started on first use)."""
        with self._watch_lock:
            if self._watch is None:
                self._watch = TaskInstanceWatch(self)
            return self._watch

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        return dict(self.api("GET", path).json())

    def wait_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        until: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str = "",
    ) -> dict[str, Any]:
        """Wait until ``until(ti)`` holds for the task instance (as last seen by the watch,
        a second old at most); the task instance."""
        deadline = time.monotonic() + timeout
        watch = self.watch()
        while True:
            ti = watch.get(dag_id, run_id, task_id)
            if ti is not None and until(ti):
                return ti
            if time.monotonic() > deadline:
                seen = f"{ti['state']} (try {ti['try_number']})" if ti else "not seen"
                raise DeploymentError(
                    f"{dag_id}/{run_id}/{task_id}: timed out after {timeout:.0f} s waiting for "
                    f"{what or 'a state'}; it is {seen}"
                )
            watch.changed(1.0)

    def wait_state(
        self, dag_id: str, run_id: str, task_id: str, states: Iterable[str], timeout: float
    ) -> dict[str, Any]:
        wanted = set(states)
        return self.wait_task(
            dag_id, run_id, task_id, lambda ti: ti["state"] in wanted, timeout, "/".join(wanted)
        )

    def set_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """Mark a task instance failed or success, as a user does in the UI."""
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        self.api("PATCH", path, json={"new_state": state})

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> None:
        """Mark a whole DAG run (``failed``, ``success`` or ``queued``)."""
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        self.api("PATCH", path, json={"state": state})

    def clear(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        """Clear task instances of one DAG run (whatever their state), as a user does."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": task_ids,
            "only_failed": False,
            "reset_dag_runs": True,
        }
        self.api("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        path = (
            f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/logs/{try_number}"
        )
        answer = self.api("GET", path, params={"full_content": "true"})
        content = answer.json().get("content")
        if isinstance(content, list):  # structured log records: one line of JSON each
            return "\n".join(
                item if isinstance(item, str) else json.dumps(item) for item in content
            )
        return str(content)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
        path = (
            f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/xcomEntries/{key}"
        )
        answer = self.api("GET", path, ok=(200, 404), params={"deserialize": "true"})
        return answer.json().get("value") if answer.status_code == 200 else None


class TaskInstanceWatch:
    """Reads every task instance of the deployment about once a second, in one thread, so
    that many cells waiting at once cost one request per second, not one each."""

    def __init__(self, deployment: AirflowDeployment, every: float = 1.0) -> None:
        self.deployment = deployment
        self.every = every
        self._seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="ti-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                answer = self.deployment.api(
                    "GET",
                    "/dags/~/dagRuns/~/taskInstances",
                    params={"limit": PAGE, "order_by": "-id"},
                )
                seen = {
                    (ti["dag_id"], ti["dag_run_id"], ti["task_id"]): ti
                    for ti in answer.json()["task_instances"]
                }
                self.error = None
            except DeploymentError as exc:
                self.error = str(exc)
                seen = None
            with self._cond:
                if seen is not None:
                    self._seen = seen
                self._cond.notify_all()
            self._stop.wait(self.every)

    def get(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        with self._cond:
            return self._seen.get((dag_id, run_id, task_id))

    def changed(self, timeout: float) -> None:
        """Wait for the next reading (or ``timeout``)."""
        with self._cond:
            self._cond.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def running(deployment: AirflowDeployment) -> Iterator[AirflowDeployment]:
    """Start the deployment; stop every process it started however the block ends."""
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
