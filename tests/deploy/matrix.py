"""The reliability matrix (issue 14): one table of scenarios (rows) run against every column.

Columns are the ways runbridge runs a platform's run from an orchestrator (:data:`COLUMNS`);
rows are what happens to it (:data:`ROWS`). A row's expected outcome is the same in every column
where it applies: the task's final state (``success``, ``failed``, or ``stopped``: killed,
marked or cancelled by the user) and the emulator's record (runs launched, cancel requests that
took effect), plus what a row checks besides (:class:`Row`'s ``expect_message``,
``expect_run``).

Each column's folder (tests/deploy/airflow, prefect, dagster) runs its deployment for real and
has one test per (column, row) pair, marked ``@pytest.mark.matrix_cell(column, row_id)``::

    @pytest.mark.parametrize("row", matrix.rows_for("prefect-task"), ids=matrix.row_id)
    @pytest.mark.matrix_cell("prefect-task")      # the row is taken from the ``row`` param
    def test_cell(row, emulator_server, control): ...
        control.script(*row.scripts)               # the row's timeline, generic words
        control.inject_all(*row.faults)            # the row's faults, if any
        ...                                        # run the flow, do the row's action
        assert not matrix.check(row, control, task_state, error=error_text,
                                platform=emulator_server.platform)

The environment picks what runs: ``RUNBRIDGE_MATRIX=full`` all rows (else the ``quick`` ones,
CI's), ``RUNBRIDGE_MATRIX_PLATFORMS`` the platforms (``rest`` by default, ``all`` the six, or a
comma list), ``RUNBRIDGE_MATRIX_OUT`` a file that collects one JSON line per cell
(``record``), which ``tools/reliability.py`` turns into docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "AIRFLOW",
    "ALL_PLATFORMS",
    "COLUMNS",
    "DAGSTER",
    "FAILURE_MESSAGE",
    "NOT_APPLICABLE",
    "PLATFORMS",
    "PREFECT",
    "ROWS",
    "WATCHERS",
    "Cell",
    "Row",
    "check",
    "expected",
    "full",
    "platforms",
    "record",
    "row",
    "row_id",
    "rows_for",
    "selected_cells",
    "why_not",
]

COLUMNS: tuple[str, ...] = (
    "airflow-operator",
    "airflow-deferrable",
    "airflow-sensor",
    "prefect-task",
    "prefect-job",
    "dagster-op",
    "dagster-asset",
)
AIRFLOW = ("airflow-operator", "airflow-deferrable", "airflow-sensor")
PREFECT = ("prefect-task", "prefect-job")
DAGSTER = ("dagster-op", "dagster-asset")
ALL_PLATFORMS: tuple[str, ...] = ("rest", "langgraph", "flyte", "wandb", "vi", "lume")

TaskOutcome = Literal["success", "failed", "stopped"]
FAILURE_MESSAGE = "matrix: the scripted failure 7f3a"
"""The message a ``failure`` row's run fails with; it must reach the task's error."""

LONG = 600.0
"""Seconds a run that must still be going at the row's action runs for."""
SHORT = 2.0
"""Seconds a run that should simply end runs for."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One scenario. ``expect_launches``/``expect_cancels``: runs created / cancel requests
    that reached the platform (``None``: not checked); ``quick``: runs in CI; ``applies_to``:
    the columns where the row makes sense (elsewhere the cell is ``n/a``).

    ``scripts`` (generic script words, for :meth:`EmulatorControl.script`) and ``faults`` (for
    :meth:`EmulatorControl.inject_all`) are what every column gives the emulator;
    ``expect_message``: text the task's error must contain (see :func:`failure_text`);
    ``expect_run``: the run's state on the platform at the end: ``running`` (still going),
    ``cancelled`` (cancelled on the platform), ``finished`` (ended on its own), or None;
    ``needs``: platform abilities the row needs (``cancel``, ``find``: a launch can be looked
    up by its key); a platform without one makes the cell ``n/a``.
    """

    id: str
    title: str
    expect_task: TaskOutcome
    expect_launches: int | None
    expect_cancels: int | None
    quick: bool
    applies_to: tuple[str, ...]
    scripts: tuple[Mapping[str, Any], ...] = ()
    faults: tuple[Mapping[str, Any], ...] = ()
    expect_message: bool = False
    expect_run: Literal["running", "cancelled", "finished"] | None = None
    needs: frozenset[str] = frozenset()
    how: str = ""
    """What the column does (the row's action), for the columns' authors and the report."""


def _run(seconds: float, final: str = "success", **extra: Any) -> dict[str, Any]:
    return {"steps": [["queued", 0.2], ["running", seconds]], "final": final, **extra}


_EVERYWHERE = COLUMNS
_NOT_DEFERRED = tuple(c for c in COLUMNS if c != "airflow-deferrable")
_LAUNCHERS = tuple(c for c in COLUMNS if c != "airflow-sensor")

WATCHERS: tuple[str, ...] = ("airflow-sensor",)
"""Columns that wait for a run another task launched (the test launches it for them). A
watcher does not own the run, so it never cancels it: on a user's kill, mark or clear it
stops waiting and the run keeps going (docs/airflow.md). Where a row expects a user's stop to
cancel the run, a watcher's cell expects 0 cancels and the run still running
(:func:`expected`)."""

NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("airflow-sensor", "crash_before_record"): "RunSensor launches nothing, so nothing can "
    "crash between a launch and its record",
    ("airflow-sensor", "run_timeout"): "RunSensor has no run_timeout: it never cancels the "
    "run it watches (its timeout is wait_timeout's, a row of its own)",
    ("airflow-sensor", "no_cancel_on_kill"): "RunSensor has no cancel_on_kill: it never "
    "cancels the run it watches (the kill rows check that it leaves it going)",
    ("airflow-sensor", "clear"): "RunSensor launches nothing: after a clear its new try waits "
    "for the same run again, so there is no second launch and nothing to cancel",
}
"""(column, row id) -> why a row listed for a column cannot apply there: those columns are
left out of the row's ``applies_to`` below, so the cell is ``n/a``; :func:`why_not` says why."""

ROWS: list[Row] = [
    Row(
        "success",
        "the run succeeds",
        "success",
        1,
        0,
        True,
        _EVERYWHERE,
        scripts=(_run(SHORT),),
        expect_run="finished",
    ),
    Row(
        "failure",
        "the run fails; the platform's message reaches the task's error",
        "failed",
        1,
        0,
        True,
        _EVERYWHERE,
        scripts=(_run(SHORT, "failed", message=FAILURE_MESSAGE),),
        expect_message=True,
        expect_run="finished",
    ),
    Row(
        "platform_cancel",
        "a user cancels the run on the platform",
        "failed",
        1,
        0,
        True,
        _EVERYWHERE,
        scripts=(_run(LONG),),
        expect_run="cancelled",
        needs=frozenset({"cancel"}),
        how="once the run is running, control.cancel_run(run id) (not a cancel runbridge sent)",
    ),
    Row(
        "unknown_then_success",
        "the platform reports a state runbridge does not know, then succeeds",
        "success",
        1,
        0,
        False,
        _EVERYWHERE,
        scripts=({"steps": [["unknown", 3.0], ["running", 1.0]], "final": "success"},),
        expect_run="finished",
    ),
    Row(
        "errors_5xx_then_success",
        "status reads answer 503 three times, then the run succeeds",
        "success",
        1,
        0,
        True,
        _EVERYWHERE,
        scripts=(_run(SHORT),),
        faults=({"kind": "status", "status": 503, "times": 3, "on": "status"},),
        expect_run="finished",
    ),
    Row(
        "rate_limited_429",
        "status reads answer 429 with Retry-After twice, then the run succeeds",
        "success",
        1,
        0,
        False,
        _EVERYWHERE,
        scripts=(_run(SHORT),),
        faults=({"kind": "status", "status": 429, "retry_after": "1", "times": 2, "on": "status"},),
        expect_run="finished",
    ),
    Row(
        "worker_sigkill",
        "the worker/run process is SIGKILLed after the launch; the retry re-attaches",
        "success",
        1,
        0,
        False,
        _EVERYWHERE,
        scripts=(_run(8.0),),
        expect_run="finished",
        how="wait_for_launches(1), SIGKILL the process that runs the task; its retry re-attaches",
    ),
    Row(
        "crash_before_record",
        "the process dies after the launch, before its record is saved; the retry finds the run",
        "success",
        1,
        0,
        False,
        _LAUNCHERS,
        scripts=(_run(8.0),),
        expect_run="finished",
        needs=frozenset({"find"}),
        how="the launch's answer is delayed (a 'delay' fault after, on launch) and the process "
        "is SIGKILLed while it waits: the run exists, no record does",
    ),
    Row(
        "ambiguous_launch",
        "the launch is created but its answer is lost (connection dropped); one run",
        "success",
        1,
        0,
        True,
        _EVERYWHERE,
        scripts=(_run(SHORT),),
        faults=({"kind": "drop", "when": "after", "on": "launch"},),
        expect_run="finished",
        needs=frozenset({"find"}),
    ),
    Row(
        "wait_timeout",
        "the wait gives up (wait_timeout): the task fails, the run keeps going, no cancel",
        "failed",
        1,
        0,
        True,
        _EVERYWHERE,
        scripts=(_run(LONG),),
        expect_run="running",
        how="wait_timeout a few seconds",
    ),
    Row(
        "run_timeout",
        "the run outlives run_timeout: runbridge cancels it",
        "failed",
        1,
        1,
        False,
        _LAUNCHERS,
        scripts=(_run(LONG),),
        expect_run="cancelled",
        needs=frozenset({"cancel"}),
        how="run_timeout a few seconds",
    ),
    Row(
        "user_kill",
        "the user kills the task while it waits (SIGTERM to its process): the run is cancelled",
        "stopped",
        1,
        1,
        False,
        _NOT_DEFERRED,
        scripts=(_run(LONG),),
        expect_run="cancelled",
        needs=frozenset({"cancel"}),
    ),
    Row(
        "mark_failed",
        "the user marks the running task failed: the run is cancelled",
        "stopped",
        1,
        1,
        False,
        AIRFLOW,
        scripts=(_run(LONG),),
        expect_run="cancelled",
        needs=frozenset({"cancel"}),
    ),
    Row(
        "mark_success",
        "the user marks the running task success: the run is cancelled",
        "stopped",
        1,
        1,
        False,
        AIRFLOW,
        scripts=(_run(LONG),),
        expect_run="cancelled",
        needs=frozenset({"cancel"}),
    ),
    Row(
        "clear",
        "the user clears the running task: its run is cancelled, the new try launches anew",
        "success",
        2,
        1,
        False,
        ("airflow-operator", "airflow-deferrable"),
        scripts=(_run(LONG), _run(SHORT)),
        needs=frozenset({"cancel"}),
    ),
    Row(
        "clear_untriggered",
        "the user clears the deferred task before any triggerer ran its trigger (no on_kill "
        "comes): the new try cancels the old run, then launches anew",
        "success",
        2,
        1,
        False,
        ("airflow-deferrable",),
        scripts=(_run(LONG), _run(SHORT)),
        needs=frozenset({"cancel"}),
        how="every triggerer stopped before the task defers; clear it while deferred; a "
        "triggerer started once the new try launched",
    ),
    Row(
        "flow_cancel",
        "the user cancels the flow run: the run is cancelled",
        "stopped",
        1,
        1,
        True,
        PREFECT,
        scripts=(_run(LONG),),
        expect_run="cancelled",
        needs=frozenset({"cancel"}),
    ),
    Row(
        "terminate",
        "the user terminates the Dagster run (also several at once): the run is cancelled",
        "stopped",
        1,
        1,
        True,
        DAGSTER,
        scripts=(_run(LONG),),
        expect_run="cancelled",
        needs=frozenset({"cancel"}),
        how="expect_launches/expect_cancels are per Dagster run: terminating N runs at once "
        "expects N and N",
    ),
    Row(
        "triggerer_restart",
        "the triggerer is restarted while the trigger waits: one run, one completion",
        "success",
        1,
        0,
        False,
        ("airflow-deferrable",),
        scripts=(_run(8.0),),
        expect_run="finished",
    ),
    Row(
        "trigger_moved",
        "the trigger moves to another triggerer: not cancelled, exactly one completion",
        "success",
        1,
        0,
        False,
        ("airflow-deferrable",),
        scripts=(_run(8.0),),
        expect_run="finished",
    ),
    Row(
        "flow_restart",
        "a crashed flow run is restarted: it re-attaches to the run (one launch)",
        "success",
        1,
        0,
        False,
        PREFECT,
        scripts=(_run(8.0),),
        expect_run="finished",
    ),
    Row(
        "no_cancel_on_kill",
        "cancel_on_kill=False: killing the task leaves the run going",
        "stopped",
        1,
        0,
        False,
        _LAUNCHERS,
        scripts=(_run(LONG),),
        expect_run="running",
        how="the column's own kill (SIGTERM, mark failed, flow cancel, terminate)",
    ),
]

_BY_ID = {r.id: r for r in ROWS}

PLATFORMS: dict[str, dict[str, Any]] = {
    "rest": {"params": {"job": "matrix"}, "options": None, "can": {"cancel", "find"}},
    "langgraph": {
        "params": {"assistant_id": "agent", "input": {"question": "matrix"}},
        "options": {},
        "can": {"cancel", "find"},
    },
    "flyte": {
        "params": {"task": "wf.main", "version": "v1", "inputs": {"n": 3}},
        "options": {"project": "flytesnacks", "domain": "development"},
        "can": {"cancel", "find"},
    },
    "wandb": {
        "params": {"docker_image": "trainer:latest"},
        "options": {"entity": "runbridge", "project": "demo", "queue": "default"},
        "can": {"cancel", "find"},
    },
    "vi": {"params": None, "options": {"organization_id": "org-emu"}, "can": {"cancel", "find"}},
    "lume": {
        "params": {
            "flow_version": "invoice_processor:v3",
            "source_path": "s3://matrix/batch.csv",
            "force_rerun": True,
        },
        "options": {},
        "can": set(),
    },
}
"""Per platform: launch ``params`` for a cell, provider ``options`` for a client or a
connection, and what it ``can`` do (see ``Row.needs``). ``None`` is filled in lazily below
(from runbridge.testing, so importing this module stays cheap)."""


def platform_settings(platform: str) -> dict[str, Any]:
    """``{"params", "options", "can"}`` of a platform (copies)."""
    settings = PLATFORMS[platform]
    params, options = settings["params"], settings["options"]
    if platform == "rest" and options is None:
        from runbridge.testing.rest import REST_CONFIG

        options = REST_CONFIG
    if platform == "vi" and params is None:
        from runbridge.testing.vi import DEFAULT_FLOW

        params = {"flow": DEFAULT_FLOW}
    return json.loads(json.dumps({"params": params, "options": options})) | {
        "can": set(settings["can"])
    }


def row(row_id: str) -> Row:
    return _BY_ID[row_id]


def row_id(value: Row) -> str:
    """For ``pytest.mark.parametrize(..., ids=row_id)``."""
    return value.id


def full() -> bool:
    """``RUNBRIDGE_MATRIX=full``: every row; else only the quick ones."""
    return os.environ.get("RUNBRIDGE_MATRIX", "").strip().lower() == "full"


def platforms() -> list[str]:
    """``RUNBRIDGE_MATRIX_PLATFORMS``: ``rest`` (default), ``all``, or a comma list."""
    given = os.environ.get("RUNBRIDGE_MATRIX_PLATFORMS", "").strip()
    if not given:
        return ["rest"]
    if given.lower() == "all":
        return list(ALL_PLATFORMS)
    chosen = [p.strip() for p in given.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in ALL_PLATFORMS]
    if unknown:
        raise ValueError(
            f"RUNBRIDGE_MATRIX_PLATFORMS: unknown platform(s) {', '.join(unknown)}; "
            f"known: {', '.join(ALL_PLATFORMS)} or 'all'"
        )
    return chosen


def applies(r: Row, column: str, platform: str | None = None) -> bool:
    """Whether the cell makes sense (else ``n/a``): the column and the platform's abilities."""
    if column not in r.applies_to:
        return False
    return platform is None or r.needs <= PLATFORMS[platform]["can"]


def why_not(r: Row, column: str, platform: str | None = None) -> str | None:
    """Why the cell is ``n/a`` (None when it applies): a reason of :data:`NOT_APPLICABLE`, the
    row being another orchestrator's, or the platform lacking what the row needs."""
    if (column, r.id) in NOT_APPLICABLE:
        return NOT_APPLICABLE[(column, r.id)]
    if column not in r.applies_to:
        return f"{r.id} is not a {column} scenario"
    if platform is not None:
        missing = sorted(r.needs - PLATFORMS[platform]["can"])
        if missing:
            return f"{platform} cannot {' or '.join(missing)} (the row needs it)"
    return None


def expected(r: Row, column: str) -> Row:
    """The row's expectation in ``column``: the row itself, except that a watcher
    (:data:`WATCHERS`) never cancels the run it waits for, so where a user's stop should
    cancel the run (``user_kill``, ``mark_failed``, ``mark_success``), it expects 0 cancels
    and the run still running."""
    if column in WATCHERS and r.expect_cancels and r.expect_task == "stopped":
        return dataclasses.replace(r, expect_cancels=0, expect_run="running")
    return r


def rows_for(column: str, *, every: bool | None = None) -> list[Row]:
    """The rows to run in ``column``: those that apply, quick ones unless :func:`full`."""
    if column not in COLUMNS:
        raise ValueError(f"unknown column {column!r}; known: {', '.join(COLUMNS)}")
    every = full() if every is None else every
    return [r for r in ROWS if column in r.applies_to and (every or r.quick)]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the matrix: a row run in a column on a platform."""

    column: str
    row: Row
    platform: str

    @property
    def id(self) -> str:
        return f"{self.column}/{self.row.id}/{self.platform}"

    @property
    def name(self) -> str:
        return f"{self.column}-{self.row.id}-{self.platform}"


def selected_cells(items: Iterable[Any], columns: Iterable[str]) -> list[Cell]:
    """The cells of the collected pytest items (their ``column``, ``row`` and ``platform``
    parameters) whose column is one of ``columns``, in collection order, leaving out items
    marked ``skip`` or with a true ``skipif``: what a column's runner submits up front."""
    wanted = set(columns)
    cells = []
    for item in items:
        params: Mapping[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("column") not in wanted or not isinstance(params.get("row"), Row):
            continue
        skipped = item.get_closest_marker("skip") is not None or any(
            m.args and m.args[0] for m in item.iter_markers("skipif")
        )
        if not skipped:
            cells.append(Cell(params["column"], params["row"], params["platform"]))
    return cells


def failure_text(platform: str) -> str:
    """What a ``failure`` row's task error must contain on ``platform``: the scripted message,
    except on W&B, whose runs carry no error text (runbridge reports a fixed one; the emulator
    puts the message in the run summary's ``error``)."""
    if platform == "wandb":
        return "non-zero exit status"
    return FAILURE_MESSAGE


def record(
    column: str,
    row: str | Row,
    platform: str,
    outcome: Literal["pass", "fail", "skip"],
    detail: str = "",
) -> None:
    """Append one cell's outcome to ``RUNBRIDGE_MATRIX_OUT`` (one JSON line), when it is set."""
    path = os.environ.get("RUNBRIDGE_MATRIX_OUT")
    if not path:
        return
    line = {
        "column": column,
        "row": row.id if isinstance(row, Row) else row,
        "platform": platform,
        "outcome": outcome,
        "detail": detail[-2000:],
        "time": time.time(),
    }
    with open(path, "a", encoding="utf-8") as handle:  # one write per line: appends interleave
        handle.write(json.dumps(line) + "\n")


def _runs(record_: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    runs = record_.get("runs") or []
    return sorted(runs, key=lambda r: r.get("started") or 0.0)


def check(
    row: Row,
    control: Any,
    task_state: str,
    *,
    error: str | None = None,
    platform: str | None = None,
    launches: int | None = None,
    cancels: int | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """The differences between an observed cell and the row's expectation (empty: pass).

    ``control``: an :class:`~runbridge.testing.EmulatorControl` (its record is read now) or a
    record dict. ``task_state``: ``success``, ``failed`` or ``stopped`` as the column observed
    its task (map the orchestrator's states yourself: Airflow ``upstream_failed`` is not a
    task outcome). ``error``: the task's error text (for ``expect_message``). ``launches``/
    ``cancels`` override the row's expectation (``terminate`` of N runs at once). ``extra``:
    differences the column found itself.
    """
    record_: Mapping[str, Any] = control if isinstance(control, Mapping) else control.record()
    problems = list(extra)
    if task_state != row.expect_task:
        problems.append(f"task ended {task_state!r}, expected {row.expect_task!r}")
    want_launches = row.expect_launches if launches is None else launches
    if want_launches is not None and record_.get("launches") != want_launches:
        problems.append(f"{record_.get('launches')} launch(es), expected {want_launches}")
    want_cancels = row.expect_cancels if cancels is None else cancels
    if want_cancels is not None and record_.get("cancels") != want_cancels:
        problems.append(f"{record_.get('cancels')} cancel(s), expected {want_cancels}")
    if row.expect_message:
        text = failure_text(platform or str(record_.get("platform") or ""))
        if text not in (error or ""):
            problems.append(f"the task's error does not contain {text!r}: {(error or '')[:300]!r}")
    runs = _runs(record_)
    if row.expect_run is not None:
        if not runs:
            problems.append(f"no run on the platform, expected one {row.expect_run}")
        else:
            last = runs[-1]
            if row.expect_run == "running" and last.get("finished"):
                problems.append(
                    f"run {last.get('id')} ended ({last.get('state')}), expected running"
                )
            elif row.expect_run == "cancelled" and not last.get("cancelled"):
                problems.append(
                    f"run {last.get('id')} is {last.get('state')}, expected it cancelled"
                )
            elif row.expect_run == "finished" and (
                not last.get("finished") or last.get("cancelled")
            ):
                problems.append(
                    f"run {last.get('id')} is {last.get('state')}, expected it to end on its own"
                )
    return problems


def summary(cells: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    """The last outcome of each (platform, row, column) among recorded cells."""
    out: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for cell in cells:
        out[(str(cell["platform"]), str(cell["row"]), str(cell["column"]))] = cell
    return out
