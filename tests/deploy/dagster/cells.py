"""The Dagster cells of the reliability matrix: what each row does in a real deployment.

A :class:`CellRunner` runs every selected cell at once (bounded by ``concurrency``), each on an
emulator process of its own (:class:`EmulatorPool`, ``runbridge emulate`` with the session's
token), so one cell's runs, faults and cancels never show in another's record; the emulator of a
cell that did not pass is stopped and replaced (a run it left behind may still launch). A cell:

1. resets its emulator and gives it the row's scripts and faults (one script per Dagster run);
2. submits the column's job through the web server's GraphQL API (``launchRun``, as the
   launchpad does), with the emulator, the launch params and the row's options in run config;
3. does the row's action: terminate through GraphQL (``terminateRuns``, as the UI's button),
   cancel the run on the platform, SIGTERM or SIGKILL the run worker (its pid is in the run's
   event log), with ``dagster/max_retries`` on the rows whose retry must re-attach;
4. waits for the Dagster run (and the runs that retried it) to finish and compares with the
   row (``matrix.check``), plus: the token is in no event of the run.

The task's state is the Dagster run's: SUCCESS is ``success``, FAILURE ``failed``, CANCELED
(terminated by the user) ``stopped``; for a run retried by the daemon, the last retry's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.deploy import matrix
from tests.deploy.conftest import EmulatorServer, start_emulator
from tests.deploy.dagster.deployment import POLL, DagsterDeployment
from tests.deploy.matrix import Cell

TOKEN_ENV = "RUNBRIDGE_DEPLOY_TOKEN"
JOBS = {"dagster-op": ("op_job", "external"), "dagster-asset": ("asset_job", "external_asset")}
"""Column -> (job, the step's op name: where its run config goes)."""
CLIENT = {
    "poll_interval": 0.25,
    "poll_backoff": 1.0,
    "poll_max_interval": 0.5,
    "request_timeout": 5.0,
    "request_attempts": 5,
    "error_window": 60.0,
}
"""Resource fields of every cell: poll every 250-500 ms (runs last 2 s and more)."""
RUNS_AT_ONCE = {"terminate": 2}
"""Rows whose cell starts several Dagster runs (terminated together)."""
RETRIED = frozenset({"worker_sigkill", "crash_before_record"})
"""Rows whose run the daemon retries (``dagster/max_retries``) after its worker dies."""
TIMEOUTS = {"wait_timeout": {"wait_timeout": 3.0}, "run_timeout": {"run_timeout": 3.0}}
REEXECUTED = "reexecute_from_failure"
"""Not a matrix row (tests/deploy/dagster/test_dagster_matrix.py): the run worker is killed,
no retry is configured, and the user re-executes the failed run from failure."""
ACTED = frozenset(
    {"platform_cancel", "terminate", "no_cancel_on_kill", "user_kill", "worker_sigkill", REEXECUTED}
)
"""Rows with an action once the step waits for its run."""
CELL_TIMEOUT = 150.0
RETRY_TIMEOUT = 400.0
"""How long a failed run's retry may take to appear: the daemon submits retries one after the
other, each waiting for its run worker to load (minutes apiece on a busy machine)."""
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
TASK_STATE = {"SUCCESS": "success", "FAILURE": "failed", "CANCELED": "stopped"}


@dataclasses.dataclass
class Result:
    cell: Cell
    task_state: str = "?"
    error: str = ""
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    crashed: str | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        runs = [(r["runId"][:8], r["status"]) for r in self.runs]
        counts = {k: self.record.get(k) for k in ("launches", "cancels", "user_cancels")}
        return (
            f"{self.cell.name}: task {self.task_state}, Dagster runs {runs}, emulator {counts}, "
            f"{self.seconds:.1f} s; error: {self.error[:300]!r}"
        )


class EmulatorPool:
    """``size`` emulator processes per platform, all with ``token``; one cell holds one."""

    def __init__(self, platforms: Mapping[str, int], token: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="rb-dg-emu-"))
        self.free: dict[str, queue.Queue[EmulatorServer]] = {}
        self.servers: list[EmulatorServer] = []
        self.token = token
        self.lock = threading.Lock()
        self.retired = 0
        """Emulators stopped and replaced after a cell that did not pass."""
        try:
            with ThreadPoolExecutor(max(1, sum(platforms.values()))) as starting:
                futures = [
                    (platform, starting.submit(self._start, platform, i))
                    for platform, size in platforms.items()
                    for i in range(size)
                ]
                for platform, future in futures:
                    server = future.result()
                    self.servers.append(server)
                    self.free.setdefault(platform, queue.Queue()).put(server)
        except BaseException:
            self.stop()
            raise

    def _start(self, platform: str, index: int) -> EmulatorServer:
        directory = self.directory / f"{platform}-{index}"
        directory.mkdir()
        # the last --token wins (click): every emulator of the session takes the deployment's
        server = start_emulator(platform, directory, "--token", self.token)
        server.token = self.token
        return server

    def take(self, platform: str) -> EmulatorServer:
        return self.free[platform].get()

    def give(self, server: EmulatorServer) -> None:
        """Back to the pool, for the next cell (only after a cell that passed: see
        :meth:`retire`)."""
        self.free[server.platform].put(server)

    def retire(self, server: EmulatorServer) -> None:
        """Stop ``server`` and put a fresh emulator of its platform in the pool instead. A cell
        that failed or could not run may leave a Dagster run behind that launches later (the
        daemon's retry of a crashed run can come minutes after the cell stopped waiting for
        it): on a reused emulator, that launch took the next cell's script and showed in its
        record (langgraph, dagster-op no_cancel_on_kill: 2 launches, its own run succeeded)."""
        with contextlib.suppress(OSError):
            server.stop()
        with self.lock:
            self.retired += 1
            index = len(self.servers)
        replacement = self._start(server.platform, index)
        with self.lock:
            self.servers.append(replacement)
        self.free[server.platform].put(replacement)

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(OSError):
                server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class CellRunner:
    """Runs the cells at once in threads; ``result(cell)`` waits for one."""

    def __init__(self, deployment: DagsterDeployment, pool: EmulatorPool, concurrency: int) -> None:
        self.deployment = deployment
        self.pool = pool
        self.executor = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="dagster-cell")
        self.futures: dict[str, Future[Result]] = {}
        self.lock = threading.Lock()
        self.began = time.monotonic()
        self.finished_at: float | None = None

    def start(self, cells: list[Cell]) -> None:
        for cell in cells:
            self.submit(cell)

    def submit(self, cell: Cell) -> Future[Result]:
        with self.lock:
            future = self.futures.get(cell.name)
            if future is None:
                future = self.futures[cell.name] = self.executor.submit(self._run, cell)
            return future

    def result(self, cell: Cell) -> Result:
        result = self.submit(cell).result(timeout=CELL_TIMEOUT * 4)
        self.finished_at = time.monotonic()
        return result

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, cell: Cell) -> Result:
        result = Result(cell)
        began = time.monotonic()
        server = self.pool.take(cell.platform)
        try:
            run_cell(self.deployment, server, cell, result)
        except Exception as exc:
            result.crashed = crash_text(exc)
        finally:
            result.seconds = time.monotonic() - began
            if result.crashed is None and not result.problems:
                self.pool.give(server)
            else:  # its Dagster runs may still launch or cancel: never reuse that emulator
                try:
                    self.pool.retire(server)
                except Exception:  # no replacement: the cell's outcome stands, say why
                    result.problems.append(
                        "the emulator could not be replaced: " + traceback.format_exc()[-500:]
                    )
        return result


def crash_text(exc: BaseException) -> str:
    """Why a cell could not run: the exception, where in the cell's code it came from (the
    frames under tests/deploy: which call to the deployment or the emulator), then the end
    of the traceback. The end alone named only httpx's frames of a reset connection."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/tests/deploy/" in f.filename]
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1][:5])
    return f"{type(exc).__name__}: {exc} (at {where or '?'})\n" + traceback.format_exc()[-2500:]


# -- one cell -----------------------------------------------------------------------------------
def run_config(cell: Cell, server: EmulatorServer, **options: Any) -> dict[str, Any]:
    _, op = JOBS[cell.column]
    return {
        "resources": {
            "external_run": {
                "config": {
                    "platform": cell.platform,
                    "base_url": server.url,
                    "token": {"env": TOKEN_ENV},
                    "options": server.options or {},
                    **CLIENT,
                }
            }
        },
        "ops": {op: {"config": {"params": server.params or {}, **options}}},
    }


def run_cell(
    deployment: DagsterDeployment, server: EmulatorServer, cell: Cell, result: Result
) -> None:
    row, control = cell.row, server.control
    control.reset()
    n = RUNS_AT_ONCE.get(row.id, 1)
    if row.scripts:
        control.script(*(list(row.scripts) * n))
    if row.faults:
        control.inject_all(*row.faults)
    options: dict[str, Any] = dict(TIMEOUTS.get(row.id, {}))
    if row.id == "no_cancel_on_kill":
        options["cancel_on_kill"] = False
    tags = {"dagster/max_retries": "1"} if row.id in RETRIED else {}
    if row.id == "crash_before_record":
        # the run is made, its answer held back: the worker dies before the step records it
        control.inject(kind="delay", seconds=20.0, when="after", on="launch")
    job, _ = JOBS[cell.column]
    config = run_config(cell, server, **options)
    with ThreadPoolExecutor(n) as submitting:  # several runs: submitted at once too
        run_ids = list(
            submitting.map(lambda _: deployment.submit(job, run_config=config, tags=tags), range(n))
        )

    act(deployment, server, cell, run_ids)

    if row.id == REEXECUTED:  # the UI's "Re-execute from failure" of the crashed run
        crashed = [deployment.wait_finished(run_id, CELL_TIMEOUT) for run_id in run_ids]
        if any(r["status"] != "FAILURE" for r in crashed):
            raise AssertionError(f"a run whose worker was killed did not fail: {crashed}")
        run_ids = [deployment.reexecute(run_id) for run_id in run_ids]
    finals = [final_run(deployment, run_id, retried=row.id in RETRIED) for run_id in run_ids]
    result.runs = finals
    events_of = {r["runId"]: deployment.events(r["runId"]) for r in finals}
    states = {task_state(row, r, events_of[r["runId"]]) for r in finals}
    result.task_state = states.pop() if len(states) == 1 else f"mixed {sorted(states)}"
    texts: list[str] = []
    leaks: list[str] = []
    for run_id in run_ids:
        for run in deployment.runs_of_root(run_id):
            events = deployment.events(run["runId"])
            texts += failure_texts(events)
            if server.token in repr(events):
                leaks.append(f"the token is in the event log of Dagster run {run['runId']}")
    result.error = "\n".join(texts)
    if row.expect_run == "running" or row.expect_cancels == 0:
        time.sleep(0.5)  # a cancel sent at the end would show by now
    result.record = control.record()
    result.problems = matrix.check(
        row,
        result.record,
        result.task_state,
        error=result.error,
        platform=cell.platform,
        launches=row.expect_launches * n if row.expect_launches is not None else None,
        cancels=row.expect_cancels * n if row.expect_cancels is not None else None,
        extra=leaks,
    )


def act(
    deployment: DagsterDeployment, server: EmulatorServer, cell: Cell, run_ids: list[str]
) -> None:
    """The row's action, once its runs are launched (or, for crash_before_record, made)."""
    row, control = cell.row, server.control
    n = len(run_ids)
    if row.id == "crash_before_record":
        control.wait_for_launches(n, CELL_TIMEOUT)
        for run_id in run_ids:
            kill_worker(deployment, run_id, signal.SIGKILL)
        return
    if row.id not in ACTED:
        return
    # the step launched its run and recorded it: it is waiting now
    control.wait_for_launches(n, CELL_TIMEOUT)
    for run_id in run_ids:
        wait_for_event(deployment, run_id, "Launched ")
    if row.id == "platform_cancel":
        record = control.wait_for_launches(n, CELL_TIMEOUT)
        for run in record["runs"]:
            control.cancel_run(run["id"])
    elif row.id in ("terminate", "no_cancel_on_kill"):
        deployment.terminate(*run_ids)  # all at once, as selecting several runs in the UI
    elif row.id == "user_kill":
        for run_id in run_ids:
            kill_worker(deployment, run_id, signal.SIGTERM)
    elif row.id in ("worker_sigkill", REEXECUTED):
        for run_id in run_ids:
            kill_worker(deployment, run_id, signal.SIGKILL)


USER_STOPS = frozenset({"user_kill", "terminate", "no_cancel_on_kill"})
"""Rows where the user stops the run: its end is the task's ``stopped``."""
INTERRUPTED = "DagsterExecutionInterruptedError"


def task_state(row: matrix.Row, run: Mapping[str, Any], events: list[dict[str, Any]]) -> str:
    """The matrix word for a finished Dagster run. A run the user stopped is ``stopped`` when
    Dagster shows it so: CANCELED (terminated), or FAILURE because its step was interrupted
    by the user's signal (Dagster marks a run whose worker got SIGTERM without a termination
    request as failed: "Execution was interrupted unexpectedly")."""
    status = str(run["status"])
    if (
        row.id in USER_STOPS
        and status == "FAILURE"
        and any(INTERRUPTED in text for text in failure_texts(events))
    ):
        return "stopped"
    return TASK_STATE.get(status, status)


def wait_for_event(deployment: DagsterDeployment, run_id: str, prefix: str) -> None:
    deadline = time.monotonic() + CELL_TIMEOUT
    while not any((e.get("message") or "").startswith(prefix) for e in deployment.events(run_id)):
        run = deployment.run(run_id)
        if run["status"] in FINISHED:
            raise AssertionError(f"run {run_id} ended {run['status']} before {prefix!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {prefix!r} event in run {run_id}")
        time.sleep(POLL)


def worker_pid(deployment: DagsterDeployment, run_id: str) -> int:
    """The run worker's pid, from the run's "Started process for run (pid: N)." event."""
    deadline = time.monotonic() + CELL_TIMEOUT
    while True:
        for event in deployment.events(run_id):
            if (event.get("message") or "").startswith("Started process for run"):
                for entry in event.get("metadataEntries") or []:
                    if entry.get("label") == "pid":
                        return int(entry["text"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no run worker pid in run {run_id}")
        time.sleep(POLL)


def kill_worker(deployment: DagsterDeployment, run_id: str, sig: signal.Signals) -> None:
    pid = worker_pid(deployment, run_id)
    if pid not in deployment.process_tree():
        raise AssertionError(f"pid {pid} of run {run_id} is not a process of the deployment")
    os.kill(pid, sig)


def final_run(deployment: DagsterDeployment, run_id: str, *, retried: bool) -> dict[str, Any]:
    """The run once finished; with ``retried``, the last run of its retries (the daemon starts
    a retry shortly after the failure: wait for it, then for it to finish)."""
    run = deployment.wait_finished(run_id, CELL_TIMEOUT)
    if not retried:
        return run
    deadline = time.monotonic() + RETRY_TIMEOUT
    while True:
        chain = deployment.runs_of_root(run_id)
        newest = chain[0]
        if newest["runId"] != run_id:
            return deployment.wait_finished(newest["runId"], CELL_TIMEOUT)
        if time.monotonic() > deadline:
            return run  # no retry came: the cell fails on the task state
        time.sleep(POLL)


def failure_texts(events: list[dict[str, Any]]) -> list[str]:
    texts = []
    for event in events:
        if event["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent"):
            texts.append(event.get("message") or "")
            error = event.get("error") or {}
            texts.append(error.get("message") or "")
    return [t for t in texts if t]
