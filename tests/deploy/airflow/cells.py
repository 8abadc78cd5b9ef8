"""The Airflow columns of the reliability matrix: one cell = one DAG run against one emulator.

:class:`CellRunner` runs the selected cells **concurrently** (one DAG run each, on an emulator
process of its own from :class:`EmulatorPool`, so scripts, faults and the launch/cancel record
belong to one cell), except those that disturb the whole deployment (``triggerer_restart``,
``trigger_moved``), which run afterwards, one at a time. Each pytest test asks for its cell's
:class:`CellResult`; the first asks start them all.

What each row does in Airflow (the row table is tests/deploy/matrix.py):

* launch-side rows (``success``, ``failure``, faults, ``ambiguous_launch``, ``wait_timeout``,
  ``run_timeout``): trigger the DAG run, wait for the task's end;
* ``platform_cancel``: once the run exists, the emulator cancels it as a platform user would;
* ``worker_sigkill`` / ``crash_before_record``: SIGKILL the task's process (the task instance's
  ``pid``, checked to be ``airflow worker -- <ti id>``) after the launch; the DAG has one retry.
  ``crash_before_record`` delays the launch's answer (the run exists, no record does) and
  kills during the delay; the deferrable column delays the first status read too, so its
  kill lands before the task defers (after that no worker process exists);
* ``user_kill``: SIGTERM to the task's process; ``mark_failed``/``mark_success``: PATCH the
  task instance through the REST API (``mark_failed`` deferred: three DAG runs marked within
  0.1 s); ``clear``: POST clearTaskInstances; ``no_cancel_on_kill``: mark failed with
  ``cancel_on_kill=False``;
* ``clear_untriggered``: every triggerer stopped before the DAG run starts, the task cleared
  once deferred, a triggerer started once the new try launched (the new try must cancel the
  old run itself: Airflow calls no ``on_kill`` for a trigger no triggerer ran);
* ``triggerer_restart``: SIGTERM the triggerer once the trigger runs, start a new one;
  ``trigger_moved``: a second triggerer is started, the first is SIGSTOPped past
  ``[triggerer] triggerer_health_check_threshold`` until the trigger is reassigned, then
  SIGCONTed (it then cancels its copy of the trigger, which calls ``on_kill``).

The sensor column watches a run the test launches with the core client (``RunClient.launch``
with a key), so the launch-side faults meet that launch. Where a row expects a kill to cancel,
the sensor's cell expects the run left going (the sensor never cancels, docs/airflow.md).

A cell that cannot end (a timeout waiting for the deployment) is reported as such; its
emulator is quarantined and its DAG run marked failed, so nothing it still does is counted in
another cell's record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runbridge.core.client import RunClient
from runbridge.testing.control import EmulatorControl
from tests.deploy import matrix, processes
from tests.deploy.airflow.deployment import TERMINAL, AirflowDeployment, DeploymentError
from tests.deploy.matrix import Cell

TOKEN = "rb-matrix-s3cret-token-5d1e"
"""The emulators' token: it must never show in a task log or an XCom."""

DAG_IDS = {
    "airflow-operator": "rb_operator",
    "airflow-deferrable": "rb_deferrable",
    "airflow-sensor": "rb_sensor",
}
RETRY_ROWS = frozenset({"worker_sigkill", "crash_before_record"})
"""Rows whose DAG has one retry (the retry is what must re-attach)."""
DISRUPTIVE = frozenset({"triggerer_restart", "trigger_moved", "clear_untriggered"})
"""Rows that act on the whole deployment: run after the others, one at a time."""
USER_ACTIONS = {
    "user_kill": "sigterm",
    "mark_failed": "failed",
    "mark_success": "success",
    "no_cancel_on_kill": "failed",
}
"""Rows where the user stops the task, and how (the task then ends ``stopped``)."""
SHORT_TIMEOUT = 4.0
"""``wait_timeout`` / ``run_timeout`` / sensor ``timeout`` of the timeout rows, seconds."""
CELL_TIMEOUT = 240.0
"""Longest a cell may take from its DAG run's trigger to the task's end."""
SETTLE = 2.0
"""Seconds to watch the emulator after the task ended, for late requests."""
CANCEL_WAIT = 60.0
"""Longest to wait, once the task ended, for the cancels a row expects. A deferred task's
cancel comes from ``RunTrigger.on_kill``, which first asks the triggerer's supervisor for the
task's state: on PostgreSQL that supervisor stalled ~17 s during a mark (its log: "Heartbeat
recovered after 16.84 seconds"; the cancel came 16.7 s after on_kill began) and longer under
the full matrix's load, past the 20 s this used to allow."""
KILL_SETTLE = 10.0
"""After a user stop with no cancel expected: long enough for the worker's next heartbeat
(5 s) to be refused and ``on_kill`` to run, so a wrong cancel would be seen."""


@dataclasses.dataclass
class CellResult:
    """What a cell observed; ``problems`` empty means it passed."""

    cell: Cell
    task_state: str = "not run"
    """``success``, ``failed``, ``stopped`` (matrix words) or the Airflow state otherwise."""
    airflow_state: str | None = None
    try_number: int | None = None
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    """The task's log of its last try (the error text the row may expect)."""
    seconds: float = 0.0
    dag_runs: list[str] = dataclasses.field(default_factory=list)
    crashed: str | None = None
    """The cell could not be run (a deployment or emulator problem), with the reason."""

    def describe(self) -> str:
        record = {k: self.record.get(k) for k in ("launches", "cancels", "requests")}
        runs = [
            (r.get("id"), r.get("state"), r.get("cancelled")) for r in self.record.get("runs", [])
        ]
        return (
            f"{self.cell.id}: task {self.task_state} (airflow {self.airflow_state}, try "
            f"{self.try_number}), {record}, runs {runs}, {self.seconds:.1f} s, dag runs "
            f"{self.dag_runs}"
        )


# -- emulators ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Emulator:
    platform: str
    url: str
    conn_id: str
    process: subprocess.Popen[str]
    control: EmulatorControl


class EmulatorPool:
    """``size`` emulator processes per platform (``runbridge emulate``), each behind its own
    Airflow connection ``rb_<platform>_<n>``; a cell takes one and gives it back."""

    def __init__(self, platforms: Iterable[str], size: int) -> None:
        self.emulators: list[Emulator] = []
        self.quarantined: list[Emulator] = []
        self._free: dict[str, list[Emulator]] = {}
        self._cond = threading.Condition()
        starting = []
        for platform in platforms:
            for n in range(size):
                # processes.popen: the emulator dies with this pytest (a parent-death signal)
                process = processes.popen(
                    [
                        sys.executable,
                        "-m",
                        "runbridge",
                        "emulate",
                        platform,
                        "--port",
                        "0",
                        "--token",
                        TOKEN,
                        "-q",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                    env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"},
                )
                starting.append((platform, n, process))
        for platform, n, process in starting:
            url = self._url(process)
            conn_id = f"rb_{platform}_{n}"
            emu = Emulator(platform, url, conn_id, process, EmulatorControl(url))
            self.emulators.append(emu)
            self._free.setdefault(platform, []).append(emu)

    @staticmethod
    def _url(process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            if found:
                # keep draining its output, or a chatty emulator would block on a full pipe
                threading.Thread(target=process.stdout.read, daemon=True).start()
                return found.group(1)
        process.kill()
        raise DeploymentError(f"runbridge emulate did not print its URL: {''.join(seen)[-2000:]}")

    def connections(self) -> dict[str, str]:
        """The ``AIRFLOW_CONN_...`` values of every emulator."""
        out = {}
        for emu in self.emulators:
            settings = matrix.platform_settings(emu.platform)
            extra = {
                "platform": emu.platform,
                "options": settings["options"] or {},
                "poll": {"first": 0.5, "factor": 1.5, "cap": 2.0},
                "request_timeout": 10,
            }
            out[emu.conn_id] = json.dumps(
                {"conn_type": "runbridge", "host": emu.url, "password": TOKEN, "extra": extra}
            )
        return out

    def acquire(self, platform: str, timeout: float = 900.0) -> Emulator:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._free[platform]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeploymentError(
                        f"no {platform} emulator free after {timeout:.0f} s "
                        f"({len(self.quarantined)} quarantined after cells that could not end)"
                    )
                self._cond.wait(left)
            return self._free[platform].pop()

    def quarantine(self, emu: Emulator) -> None:
        """Never hand ``emu`` out again: a DAG run of a cell that could not end may still
        launch or cancel on it, which would be counted in the next cell's record."""
        with self._cond:
            self.quarantined.append(emu)

    def release(self, emu: Emulator) -> None:
        with self._cond:
            self._free[emu.platform].append(emu)
            self._cond.notify()

    def stop(self) -> None:
        for emu in self.emulators:
            emu.control.close()
            if emu.process.poll() is None:
                os.killpg(emu.process.pid, signal.SIGTERM)
        for emu in self.emulators:
            try:
                emu.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(emu.process.pid, signal.SIGKILL)
                emu.process.wait(5)


# -- running cells -----------------------------------------------------------------------------
class CellRunner:
    """Runs cells on one deployment and one emulator pool; each cell's result once."""

    def __init__(self, deployment: AirflowDeployment, pool: EmulatorPool, concurrency: int) -> None:
        self.deployment = deployment
        self.pool = pool
        self.concurrency = concurrency
        self._futures: dict[str, Future[CellResult]] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="cell")
        self._serial = ThreadPoolExecutor(1, thread_name_prefix="cell-serial")
        self.results: list[CellResult] = []
        self.began = time.monotonic()

    def submit_all(self, cells: Iterable[Cell]) -> None:
        """Start every cell not started yet: the ordinary ones at once, the disruptive ones
        (one at a time) after all ordinary ones ended."""
        with self._lock:
            todo = [c for c in cells if c.id not in self._futures]
            ordinary = [c for c in todo if c.row.id not in DISRUPTIVE]
            disruptive = [c for c in todo if c.row.id in DISRUPTIVE]
            batch = [self._executor.submit(self._run, c) for c in ordinary]
            for cell, future in zip(ordinary, batch, strict=True):
                self._futures[cell.id] = future
            for cell in disruptive:
                self._futures[cell.id] = self._serial.submit(self._after, batch, cell)

    def _after(self, batch: list[Future[CellResult]], cell: Cell) -> CellResult:
        for future in batch:
            future.exception()  # wait, whatever happened to it
        return self._run(cell)

    def result(self, cell: Cell, timeout: float = 900.0) -> CellResult:
        with self._lock:
            future = self._futures.get(cell.id)
        if future is None:
            self.submit_all([cell])
            future = self._futures[cell.id]
        return future.result(timeout)

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._serial.shutdown(wait=True, cancel_futures=True)

    def _stop_runs(self, cell: Cell, runs: list[str]) -> None:
        """Fail the DAG runs of a cell that could not end (best effort), so they stop
        loading the deployment."""
        retry = "_retry" if cell.row.id in RETRY_ROWS else ""
        for run_id in runs:
            try:
                self.deployment.set_run_state(DAG_IDS[cell.column] + retry, run_id, "failed")
            except Exception:  # the cell already failed, with its reason
                pass

    def _run(self, cell: Cell) -> CellResult:
        emu = self.pool.acquire(cell.platform)
        result = CellResult(cell)
        began = time.monotonic()
        try:
            _CellRun(self.deployment, emu, cell, result).run()
        except Exception as exc:  # the cell's test reports it
            result.crashed = f"{type(exc).__name__}: {exc}"
        finally:
            result.seconds = time.monotonic() - began
            if result.crashed is None:
                self.pool.release(emu)
            else:
                self.pool.quarantine(emu)
                self._stop_runs(cell, result.dag_runs)
        self.results.append(result)
        return result


class _CellRun:
    """One cell, step by step."""

    def __init__(
        self, deployment: AirflowDeployment, emu: Emulator, cell: Cell, result: CellResult
    ) -> None:
        self.af = deployment
        self.emu = emu
        self.control = emu.control
        self.cell = cell
        self.row = cell.row
        self.column = cell.column
        self.result = result
        self.settings = matrix.platform_settings(cell.platform)
        retry = "_retry" if self.row.id in RETRY_ROWS else ""
        self.dag_id = DAG_IDS[cell.column] + retry

    # the cell's parts ------------------------------------------------------------------------
    def run(self) -> None:
        row, control = self.row, self.control
        control.reset()
        copies = 3 if self._several() else 1
        scripts = list(row.scripts) * copies
        if row.id == "trigger_moved":
            # the move takes a second triggerer's start plus the health-check threshold
            scripts = [{"steps": [["queued", 0.2], ["running", 60.0]], "final": "success"}]
        if scripts:
            control.script(*scripts)
        faults = [dict(f) for f in row.faults]
        if row.id == "crash_before_record":
            faults.append({"kind": "delay", "seconds": 8.0, "when": "after", "on": "launch"})
        if row.id in ("worker_sigkill", "crash_before_record") and self._deferred():
            faults.append({"kind": "delay", "seconds": 8.0, "when": "before", "on": "status"})
        if self.column == "airflow-sensor" and row.id == "crash_before_record":
            faults = [dict(f) for f in row.faults]  # the test launches: nothing to crash
        if faults:
            control.inject_all(*faults)

        if row.id == "clear_untriggered":
            for old in self.af.triggerers():  # no triggerer may take the first try's trigger
                old.stop()
        conf = self._conf()
        slug = f"{self.row.id}__{self.column}__{self.cell.platform}__{time.time_ns()}"
        runs = self.result.dag_runs
        for n in range(copies):
            runs.append(self.af.trigger(self.dag_id, conf, f"{slug}__{n}"))
        action = self._action()
        if action is not None:
            action(runs)
        tis = [self._final(r) for r in runs]
        self._settle()
        self.result.record = control.record()
        ti = tis[0]
        self.result.airflow_state = ti["state"]
        self.result.try_number = ti["try_number"]
        self.result.task_state = self._task_state([t["state"] for t in tis])
        self.result.error = self._logs(runs[0], ti["try_number"])
        self.result.problems = matrix.check(
            self._expected(),
            self.result.record,
            self.result.task_state,
            error=self.result.error,
            platform=self.cell.platform,
            launches=(self.row.expect_launches or 0) * copies if copies > 1 else None,
            cancels=(self.row.expect_cancels or 0) * copies if copies > 1 else None,
            extra=self._extra(runs, tis),
        )

    def _deferred(self) -> bool:
        return self.column == "airflow-deferrable"

    def _several(self) -> bool:
        """``mark_failed`` of deferred tasks is done to three at once (issue 14)."""
        return self.row.id == "mark_failed" and self._deferred()

    def _expected(self) -> matrix.Row:
        """The row's expectation in this column (``matrix.expected``: the sensor never cancels
        the run it watches, so a kill row expects it left going)."""
        return matrix.expected(self.row, self.column)

    def _conf(self) -> dict[str, Any]:
        row = self.row
        options: dict[str, Any] = {}
        if self.column == "airflow-sensor":
            if row.id == "wait_timeout":
                options["timeout"] = SHORT_TIMEOUT
            options["poke_interval"] = 0.5
            return {
                "conn_id": self.emu.conn_id,
                "run_ref": self._launch_for_sensor(),
                "options": options,
            }
        if row.id == "wait_timeout":
            options["wait_timeout"] = SHORT_TIMEOUT
        if row.id == "run_timeout":
            options["run_timeout"] = SHORT_TIMEOUT
        if row.id == "no_cancel_on_kill":
            options["cancel_on_kill"] = False
        return {"conn_id": self.emu.conn_id, "params": self.settings["params"], "options": options}

    def _launch_for_sensor(self) -> str:
        options = self.settings["options"] or {}
        with RunClient(self.cell.platform, self.emu.url, TOKEN, **options) as client:
            key = f"matrix/{self.cell.id}/{time.time_ns()}"
            ref = client.launch(self.settings["params"], key=key)
        return ref.to_string()

    # actions ---------------------------------------------------------------------------------
    def _action(self) -> Callable[[list[str]], None] | None:
        row_id = self.row.id
        if row_id == "platform_cancel":
            return self._platform_cancel
        if row_id in ("worker_sigkill", "crash_before_record"):
            return self._sigkill
        if row_id in USER_ACTIONS:
            return self._user_stop
        if row_id == "clear":
            return self._clear
        if row_id == "clear_untriggered":
            return self._clear_untriggered
        if row_id == "triggerer_restart":
            return self._triggerer_restart
        if row_id == "trigger_moved":
            return self._trigger_moved
        return None

    def _waiting(self, run_id: str) -> dict[str, Any]:
        """Wait until the task waits for its run: launched, and running in the worker (or
        deferred, for the deferrable column)."""
        self.control.wait_for_launches(1, timeout=CELL_TIMEOUT)
        if not self._deferred():
            return self.af.wait_state(self.dag_id, run_id, "run", ["running"], CELL_TIMEOUT)
        # deferred, and its trigger taken by a triggerer: a task cleared or marked before any
        # triggerer ran its trigger gets no on_kill at all (reported separately)
        return self.af.wait_task(
            self.dag_id,
            run_id,
            "run",
            lambda t: t["state"] == "deferred" and bool(t.get("triggerer_job")),
            CELL_TIMEOUT,
            "deferred with its trigger on a triggerer",
        )

    def _platform_cancel(self, runs: list[str]) -> None:
        self._waiting(runs[0])
        run = self.control.wait_for_run(timeout=30)
        self.control.cancel_run(str(run["id"]))

    def _task_pid(self, run_id: str) -> int:
        """The pid of the process running the task (``airflow worker -- <ti id>``)."""
        ti = self.af.wait_task(
            self.dag_id,
            run_id,
            "run",
            lambda t: t["state"] == "running" and bool(t.get("pid")),
            CELL_TIMEOUT,
            "running with a pid",
        )
        pid = int(ti["pid"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError as exc:
            raise DeploymentError(f"task pid {pid} is gone: {exc}") from None
        if str(ti["id"]) not in cmdline:
            raise DeploymentError(f"pid {pid} is not the task {ti['id']}: {cmdline!r}")
        return pid

    def _sigkill(self, runs: list[str]) -> None:
        if self.column == "airflow-sensor":
            pid = self._task_pid(runs[0])
            time.sleep(1.0)  # a poke or two first
        else:
            self.control.wait_for_launches(1, timeout=CELL_TIMEOUT)
            if self.row.id == "worker_sigkill":
                # after the launch was recorded (the run_ref XCom comes after the record): a
                # kill before it is the crash_before_record row, which a platform without a
                # lookup by key (Lume) cannot re-attach from
                deadline = time.monotonic() + CELL_TIMEOUT
                while self.af.xcom(self.dag_id, runs[0], "run", "run_ref") is None:
                    if time.monotonic() > deadline:
                        raise DeploymentError(f"{self.cell.id}: no run_ref XCom after the launch")
                    time.sleep(0.1)
            pid = self._task_pid(runs[0])
        os.kill(pid, signal.SIGKILL)

    def _user_stop(self, runs: list[str]) -> None:
        how = USER_ACTIONS[self.row.id]
        if self.column == "airflow-sensor":
            self.af.wait_state(self.dag_id, runs[0], "run", ["running"], CELL_TIMEOUT)
            time.sleep(1.0)
        else:
            for run_id in runs:
                self.control.wait_for_launches(len(runs), timeout=CELL_TIMEOUT)
                self._waiting(run_id)
        if how == "sigterm":
            os.kill(self._task_pid(runs[0]), signal.SIGTERM)
            return
        # several at once: every PATCH sent within 0.1 s (a barrier, one thread each)
        barrier = threading.Barrier(len(runs))
        errors: list[BaseException] = []
        sent: list[float] = []

        def mark(run_id: str) -> None:
            try:
                barrier.wait(30)
                sent.append(time.monotonic())
                self.af.set_state(self.dag_id, run_id, "run", how)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=mark, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
        if len(sent) > 1 and max(sent) - min(sent) > 0.1:
            raise DeploymentError(f"the marks were {max(sent) - min(sent):.3f} s apart")

    def _clear(self, runs: list[str]) -> None:
        ti = self._waiting(runs[0])
        self.first_try = int(ti["try_number"])
        self.af.clear(self.dag_id, runs[0], ["run"])

    def _clear_untriggered(self, runs: list[str]) -> None:
        """Clear the task while it is deferred and no triggerer runs (so none ever ran its
        trigger, and no on_kill comes); once its new try launched, start a triggerer so the
        new deferral can end."""
        try:
            self.control.wait_for_launches(1, timeout=CELL_TIMEOUT)
            ti = self.af.wait_task(
                self.dag_id,
                runs[0],
                "run",
                lambda t: t["state"] == "deferred",
                CELL_TIMEOUT,
                "deferred",
            )
            if ti.get("triggerer_job"):
                raise DeploymentError(f"a triggerer took the trigger: {ti['triggerer_job']}")
            self.first_try = int(ti["try_number"])
            self.af.clear(self.dag_id, runs[0], ["run"])
            self.control.wait_for_launches(2, timeout=CELL_TIMEOUT)
        finally:
            if not self.af.triggerers():
                self.af.start_triggerer()

    def _triggerer_restart(self, runs: list[str]) -> None:
        self._waiting(runs[0])
        self._wait_trigger_assigned(runs[0])
        for old in self.af.triggerers():
            old.stop()
        self.af.start_triggerer()

    def _wait_trigger_assigned(self, run_id: str) -> int:
        ti = self.af.wait_task(
            self.dag_id,
            run_id,
            "run",
            lambda t: bool(t.get("triggerer_job")),
            60,
            "its trigger to be assigned to a triggerer",
        )
        return int(ti["triggerer_job"]["id"])

    def _trigger_moved(self, runs: list[str]) -> None:
        self._waiting(runs[0])
        job = self._wait_trigger_assigned(runs[0])
        holder = self.af.triggerer_for_job(job)
        if holder is None:
            raise DeploymentError(f"no triggerer process of this deployment holds job {job}")
        if len(self.af.triggerers()) < 2:
            self.af.start_triggerer()
        holder.signal_group(signal.SIGSTOP)
        try:
            self.af.wait_task(
                self.dag_id,
                runs[0],
                "run",
                lambda t: bool(t.get("triggerer_job")) and t["triggerer_job"]["id"] != job,
                90,
                f"its trigger to move away from the stopped triggerer (job {job})",
            )
            self.moved_from = job
        finally:
            holder.signal_group(signal.SIGCONT)

    # ending ----------------------------------------------------------------------------------
    def _final(self, run_id: str) -> dict[str, Any]:
        first = getattr(self, "first_try", None)

        def ended(ti: dict[str, Any]) -> bool:
            if ti["state"] not in TERMINAL:
                return False
            return first is None or int(ti["try_number"]) > first  # the try after the clear

        return self.af.wait_task(self.dag_id, run_id, "run", ended, CELL_TIMEOUT, "its end")

    def _settle(self) -> None:
        want = self.row.expect_cancels or 0
        if self.row.id in USER_ACTIONS and not self._expected().expect_cancels:
            time.sleep(KILL_SETTLE)
            return
        if want:
            try:
                copies = 3 if self._several() else 1
                self.control.wait_for_cancels(want * copies, timeout=CANCEL_WAIT)
            except TimeoutError:
                return  # check() reports the missing cancel
        time.sleep(SETTLE)

    def _task_state(self, states: list[str]) -> str:
        if self.row.id in USER_ACTIONS:
            how = USER_ACTIONS[self.row.id]
            marked = "failed" if how in ("sigterm", "failed") else "success"
            if all(s == marked for s in states):
                return "stopped"
        state = states[0]
        if any(s != state for s in states):
            return f"mixed {states}"
        return state if state in ("success", "failed") else f"airflow {state}"

    def _logs(self, run_id: str, try_number: int) -> str:
        try:
            return self.af.task_log(self.dag_id, run_id, "run", try_number)
        except DeploymentError as exc:
            return f"(log not readable: {exc})"

    def _extra(self, runs: list[str], tis: list[dict[str, Any]]) -> list[str]:
        problems = []
        for run_id, ti in zip(runs, tis, strict=True):
            for n in range(1, int(ti["try_number"]) + 1):
                if TOKEN in self._logs(run_id, n):
                    problems.append(f"the token is in the log of {run_id} try {n}")
            for key in ("return_value", "run_ref", "run_url"):
                if TOKEN in json.dumps(self.af.xcom(self.dag_id, run_id, "run", key)):
                    problems.append(f"the token is in XCom {key} of {run_id}")
        if self._several():
            for run in self.result.record.get("runs", []):
                if not run.get("cancelled"):
                    problems.append(f"run {run.get('id')} of the three was not cancelled")
        if self.row.id == "trigger_moved":
            if int(tis[0]["try_number"]) != 1:
                problems.append(f"try {tis[0]['try_number']}: the task ran more than once")
            if not hasattr(self, "moved_from"):
                problems.append("the trigger did not move")
        return problems


def selected_cells(items: Iterable[Any]) -> list[Cell]:
    """The cells of the collected Airflow matrix tests, in collection order."""
    return matrix.selected_cells(items, matrix.AIRFLOW)
