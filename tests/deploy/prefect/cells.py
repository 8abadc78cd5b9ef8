"""The Prefect columns of the reliability matrix: one cell = one flow run (of a deployment, run
by the real worker in its own process) against one emulator process.

:class:`CellRunner` runs the selected cells **concurrently** (each on an emulator process of its
own from :class:`EmulatorPool`, so scripts, faults and the launch/cancel record belong to one
cell), except ``flow_restart``, which kills the worker and runs after the others, alone. Each
pytest test asks for its cell's :class:`CellResult`; the first ask has started them all.

What each row does in Prefect (the row table is tests/deploy/matrix.py):

* launch-side rows (``success``, ``failure``, faults, ``ambiguous_launch``, ``wait_timeout``,
  ``run_timeout``): create the flow run from its deployment, wait for its final state;
* ``platform_cancel``: once the run exists, the emulator cancels it as a platform user would;
* ``flow_cancel``: once the run exists, the flow run is cancelled through the API
  (``Cancelling``, as the UI does; the worker then stops the flow-run process); every
  ``flow_cancel`` cell of the session cancels at the same moment (several at once);
  ``no_cancel_on_kill``: the same with ``cancel_on_kill=False``;
* ``user_kill``: SIGTERM to the flow-run process;
* ``worker_sigkill``: SIGKILL the flow-run process after the launch; the worker reports the
  flow run Crashed; the test restarts it as the UI's Retry does (state ``Scheduled``, forced);
  the new flow-run process must re-attach (one launch) and succeed;
* ``crash_before_record``: the launch's answer is delayed 8 s (the run exists, the process has
  only its ``starting`` record) and the process is SIGKILLed meanwhile; restarted as above, it
  finds the run by its key;
* ``flow_restart``: the worker *and* the flow-run process are SIGKILLed (the machine died); a
  new worker is started and the flow run restarted: it re-attaches (one launch).

The task's outcome is read from the flow run's final state (Completed: ``success``, Failed:
``failed``, Cancelled or Crashed: ``stopped``); the column ``prefect-task`` also checks its task
run's state (a cancelled flow run's task reads Cancelled, issue 14 defect 8). No cell may show
the token in its flow run's logs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tests.deploy import matrix
from tests.deploy.conftest import EmulatorServer, start_emulator
from tests.deploy.matrix import Cell
from tests.deploy.prefect.deployment import PrefectDeployment

T = TypeVar("T")

SHORT_TIMEOUT = 4.0
"""``wait_timeout`` / ``run_timeout`` of the timeout rows, seconds."""
CELL_TIMEOUT = float(os.environ.get("RUNBRIDGE_PREFECT_CELL_TIMEOUT", "240"))
"""Longest a cell may take from its flow run's creation to its final state (each flow run is a
new process that imports Prefect: on a loaded 2-core machine, a dozen of them at once take
minutes). ``RUNBRIDGE_PREFECT_CELL_TIMEOUT`` overrides it."""
SETTLE = 1.5
"""Seconds to watch the emulator after the flow run ended, for late requests."""
KILL_SETTLE = 5.0
"""After a kill with no cancel expected: long enough for a wrong cancel to be seen."""
RESTART_ROWS = frozenset({"worker_sigkill", "crash_before_record", "flow_restart"})
DISRUPTIVE = frozenset({"flow_restart"})
"""Rows that act on the whole deployment (the worker): after the others, one at a time."""
CANCEL_ROWS = frozenset({"flow_cancel", "no_cancel_on_kill"})


@dataclasses.dataclass
class CellResult:
    """What a cell observed; ``problems`` empty means it passed."""

    cell: Cell
    task_state: str = "not run"
    prefect_state: str | None = None
    task_run_states: list[str] = dataclasses.field(default_factory=list)
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    flow_run: str | None = None
    crashed: str | None = None
    """The cell could not be run (a deployment or emulator problem), with the reason."""

    def describe(self) -> str:
        record = {k: self.record.get(k) for k in ("launches", "cancels", "requests")}
        runs = [
            (r.get("id"), r.get("state"), r.get("cancelled")) for r in self.record.get("runs", [])
        ]
        return (
            f"{self.cell.id}: task {self.task_state} (prefect {self.prefect_state}, task runs "
            f"{self.task_run_states}), {record}, runs {runs}, {self.seconds:.1f} s, flow run "
            f"{self.flow_run}"
        )


def selected_cells(items: Iterable[Any]) -> list[Cell]:
    """The cells of the collected Prefect matrix tests, in collection order."""
    return matrix.selected_cells(items, matrix.PREFECT)


class EmulatorPool:
    """``size`` emulator processes per platform, each with a saved ``RunbridgeCredentials``
    block ``rb-<platform>-<n>``; a cell takes one and gives it back, or, when it did not pass,
    retires it (:meth:`retire`)."""

    def __init__(self, platforms: Iterable[str], size: int, directory: Path) -> None:
        self.servers: list[tuple[str, EmulatorServer]] = []
        self._free: dict[str, list[tuple[str, EmulatorServer]]] = {}
        self._cond = threading.Condition()
        self._directory = directory
        self.retired = 0
        """Emulators stopped and replaced after a cell that did not pass."""
        wanted = [(p, n) for p in platforms for n in range(size)]

        def start(pn: tuple[str, int]) -> tuple[tuple[str, int], EmulatorServer]:
            return pn, self._start(pn[0], str(pn[1]))

        with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as starting:
            started = list(starting.map(start, wanted))
        for (platform, n), server in started:
            block = f"rb-{platform}-{n}"
            entry = (block, server)
            self.servers.append(entry)
            self._free.setdefault(platform, []).append(entry)

    def _start(self, platform: str, name: str) -> EmulatorServer:
        # a directory each: start_emulator reads the URL from its log file, named by platform
        place = self._directory / f"emulator-{platform}-{name}"
        place.mkdir(parents=True, exist_ok=True)
        return start_emulator(platform, place)

    def save_blocks(self) -> None:
        for block, server in self.servers:
            _save_block(block, server)

    def take(self, platform: str) -> tuple[str, EmulatorServer]:
        with self._cond:
            while not self._free.get(platform):
                self._cond.wait()
            return self._free[platform].pop()

    def give(self, entry: tuple[str, EmulatorServer]) -> None:
        with self._cond:
            self._free.setdefault(entry[1].platform, []).append(entry)
            self._cond.notify_all()

    def retire(self, entry: tuple[str, EmulatorServer]) -> None:
        """Stop the emulator of a cell that did not pass and put a fresh one, with a block of
        a new name, in the pool instead: a flow run that cell left behind may still launch
        (on a reused emulator, that launch takes the next cell's script and counts in its
        record), and a pool that only shrank would leave later cells waiting forever."""
        _, server = entry
        try:
            server.stop()
        except OSError:
            pass
        with self._cond:
            self.retired += 1
            name = f"r{self.retired}"
        replacement = (f"rb-{server.platform}-{name}", self._start(server.platform, name))
        _save_block(*replacement)
        with self._cond:
            self.servers.append(replacement)
        self.give(replacement)

    def stop(self) -> None:
        for _, server in self.servers:
            try:
                server.stop()
            except OSError:
                pass


def _save_block(block: str, server: EmulatorServer) -> None:
    """The ``RunbridgeCredentials`` block ``block`` for ``server`` (the flows load it by name)."""
    from pydantic import SecretStr

    from runbridge.prefect_blocks import RunbridgeCredentials

    RunbridgeCredentials(
        platform=server.platform,
        base_url=server.url,
        token=SecretStr(server.token),
        options=server.options or {},
    ).save(block, overwrite=True)


def outcome(state_type: str) -> str:
    """The matrix word for a Prefect final state type."""
    return {
        "COMPLETED": "success",
        "FAILED": "failed",
        "CANCELLED": "stopped",
        "CRASHED": "stopped",
    }.get(state_type, state_type.lower())


class CellRunner:
    def __init__(self, deployment: PrefectDeployment, pool: EmulatorPool, concurrency: int):
        self.deployment = deployment
        self.pool = pool
        self.results: list[CellResult] = []
        self._futures: dict[str, Future[CellResult]] = {}
        self._concurrency = max(1, concurrency)
        self._executor = ThreadPoolExecutor(max_workers=self._concurrency)
        self._serial = ThreadPoolExecutor(max_workers=1)
        self._cancel_barrier: threading.Barrier | None = None
        self._flow_runs: list[Any] = []
        self._lock = threading.Lock()

    # -- scheduling ------------------------------------------------------------------------------
    def submit_all(self, cells: list[Cell]) -> None:
        normal = [c for c in cells if c.row.id not in DISRUPTIVE]
        disruptive = [c for c in cells if c.row.id in DISRUPTIVE]
        cancelling = sum(c.row.id in CANCEL_ROWS for c in normal)
        if cancelling:  # never more parties than cells can run at once (it would deadlock)
            self._cancel_barrier = threading.Barrier(min(cancelling, self._concurrency))
        for cell in normal:
            self._futures[cell.id] = self._executor.submit(self._run, cell)
        first = list(self._futures.values())
        for cell in disruptive:
            self._futures[cell.id] = self._serial.submit(self._after, first, cell)

    def _after(self, first: list[Future[CellResult]], cell: Cell) -> CellResult:
        for future in first:
            try:
                future.result()
            except Exception:
                pass
        return self._run(cell)

    def result(self, cell: Cell) -> CellResult:
        return self._futures[cell.id].result(timeout=CELL_TIMEOUT * 3)

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._serial.shutdown(wait=True, cancel_futures=True)
        for flow_run_id in self._flow_runs:
            self._kill(flow_run_id, signal.SIGKILL)

    # -- one cell ----------------------------------------------------------------------------------
    def _run(self, cell: Cell) -> CellResult:
        result = CellResult(cell)
        began = time.monotonic()
        entry = self.pool.take(cell.platform)
        try:
            self._cell(cell, entry, result)
        except Exception as exc:  # the cell could not be run: say why
            result.crashed = f"{type(exc).__name__}: {exc}"
        finally:
            result.seconds = time.monotonic() - began
            if result.crashed is None and not result.problems:
                self.pool.give(entry)
            else:  # its flow run may still launch later: stop it, and retire the emulator
                if result.crashed is not None:
                    self._abandon(result.flow_run)
                try:
                    self.pool.retire(entry)
                except Exception as exc:  # no replacement: the cell's outcome stands
                    result.problems.append(f"the emulator could not be replaced: {exc!r}")
            with self._lock:
                self.results.append(result)
        return result

    def _abandon(self, flow_run_id: str | None) -> None:
        if flow_run_id is None:
            return
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        self._kill(flow_run_id, signal.SIGKILL)
        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, Cancelled(), force=True)
        except Exception:
            pass
        self._kill(flow_run_id, signal.SIGKILL)

    def _cell(self, cell: Cell, entry: tuple[str, EmulatorServer], result: CellResult) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        block, server = entry
        control = server.control
        row = cell.row
        control.reset()
        if row.scripts:
            control.script(*row.scripts)
        faults = [dict(f) for f in row.faults]
        if row.id == "crash_before_record":
            faults.append({"kind": "delay", "seconds": 8.0, "when": "after", "on": "launch"})
        if faults:
            control.inject_all(*faults)
        parameters: dict[str, Any] = {"block": block, "params": server.params}
        if row.id == "wait_timeout":
            parameters["wait_timeout"] = SHORT_TIMEOUT
        if row.id == "run_timeout":
            parameters["run_timeout"] = SHORT_TIMEOUT
        if row.id == "no_cancel_on_kill":
            parameters["cancel_on_kill"] = False
        deployment_id = self.deployment.deployments[cell.column]
        with get_client(sync_client=True) as client:
            flow_run = _retrying(
                lambda: client.create_flow_run_from_deployment(
                    deployment_id, parameters=parameters, tags=["rb-matrix", row.id]
                )
            )
            result.flow_run = str(flow_run.id)
            with self._lock:
                self._flow_runs.append(flow_run.id)
            deadline = time.monotonic() + CELL_TIMEOUT

            if row.id == "platform_cancel":
                record = control.wait_for_launches(1, CELL_TIMEOUT)
                time.sleep(1.0)  # the wait has begun
                control.cancel_run(record["runs"][-1]["id"])
                deadline = time.monotonic() + CELL_TIMEOUT  # its end counts from the action
            elif row.id in CANCEL_ROWS:
                control.wait_for_launches(1, CELL_TIMEOUT)
                time.sleep(1.0)  # the launch is recorded and the wait has begun
                if self._cancel_barrier is not None:
                    self._cancel_barrier.wait(timeout=CELL_TIMEOUT)
                client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
                # its end counts from the cancel: the barrier may have held this cell for
                # minutes (the other cancelling cells start later when the cells outnumber
                # the concurrency), which used to eat the flow run's time to end
                deadline = time.monotonic() + CELL_TIMEOUT
            elif row.id == "user_kill":
                control.wait_for_launches(1, CELL_TIMEOUT)
                time.sleep(1.0)
                self._kill(flow_run.id, signal.SIGTERM)
                deadline = time.monotonic() + CELL_TIMEOUT
            elif row.id in RESTART_ROWS:
                control.wait_for_launches(1, CELL_TIMEOUT)
                if row.id != "crash_before_record":
                    time.sleep(1.5)  # the launch's record is saved
                pids = self.deployment.flow_run_pids(flow_run.id)
                if not pids:
                    result.problems.append("found no flow-run process to kill")
                if row.id == "flow_restart":
                    worker = self.deployment.workers[-1]
                    os.killpg(worker.pid, signal.SIGKILL)
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass  # gone with the worker's process group
                if row.id == "flow_restart":
                    worker.wait(timeout=10)
                    self.deployment.start_worker()
                else:  # the worker sees its process die and reports the flow run Crashed
                    crashed = self._wait_final(client, flow_run.id, deadline)
                    if crashed.type.value != "CRASHED":
                        result.problems.append(
                            f"after SIGKILL the flow run is {crashed.name}, expected Crashed"
                        )
                self._restart(client, flow_run.id, deadline)
                deadline = time.monotonic() + CELL_TIMEOUT  # a second process to start
            final = self._wait_final(client, flow_run.id, deadline)
            time.sleep(KILL_SETTLE if row.expect_cancels == 0 and row.id in CANCEL_ROWS else SETTLE)
            result.prefect_state = final.name
            result.task_state = outcome(final.type.value)
            extra = list(result.problems)
            task_runs = client.read_task_runs(
                flow_run_filter=_flow_run_filter(flow_run.id),
            )
            result.task_run_states = sorted(str(t.state.name) for t in task_runs if t.state)
            cancelled_task = "Cancelled" in result.task_run_states
            if cell.column == "prefect-task" and row.id in CANCEL_ROWS and not cancelled_task:
                extra.append(f"the task run reads {result.task_run_states}, not Cancelled")
            logs = _logs(client, flow_run.id)
            result.error = "\n".join([final.message or "", *logs])
            if server.token in result.error or server.token in str(
                client.read_flow_run(flow_run.id).parameters
            ):
                extra.append("the token shows in the flow run's logs or parameters")
            result.record = control.record()
            result.problems = matrix.check(
                row,
                result.record,
                result.task_state,
                error=result.error,
                platform=cell.platform,
                extra=extra,
            )

    @staticmethod
    def _restart(client: Any, flow_run_id: Any, deadline: float) -> None:
        """Restart a crashed flow run as the UI's Retry does (state ``Scheduled``, forced). The
        crash is reported twice (by the worker and by its runner), so a late report can undo
        the restart: then restart again."""
        from prefect.states import Scheduled

        time.sleep(2.0)
        while True:
            client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
            watch = time.monotonic() + 10.0
            reverted = False
            while time.monotonic() < watch:
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.type.value == "CRASHED":
                    reverted = True
                    break
                time.sleep(0.5)
            if not reverted:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} could not be restarted")

    @staticmethod
    def _wait_final(client: Any, flow_run_id: Any, deadline: float) -> Any:
        began = time.monotonic()
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            if time.monotonic() > deadline:
                name = state.name if state is not None else None
                raise TimeoutError(
                    f"flow run {flow_run_id} still {name} at its deadline (waited "
                    f"{time.monotonic() - began:.0f} s for its end; the cell allows "
                    f"{CELL_TIMEOUT:g} s after its action)"
                )
            time.sleep(0.5)

    def _kill(self, flow_run_id: Any, sig: int) -> list[int]:
        pids = self.deployment.flow_run_pids(flow_run_id)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        return pids


def _retrying(call: Callable[[], T], attempts: int = 5) -> T:
    """``call()``, again after a 5xx of the Prefect server (its SQLite database is busy when a
    few dozen flow runs start at once on a loaded machine)."""
    from prefect.exceptions import PrefectHTTPStatusError

    for attempt in range(attempts):
        try:
            return call()
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code < 500 or attempt == attempts - 1:
                raise
            time.sleep(2.0 * (attempt + 1))
    raise AssertionError("unreachable")


def _flow_run_filter(flow_run_id: Any) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def _logs(client: Any, flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [str(log.message) for log in logs]
