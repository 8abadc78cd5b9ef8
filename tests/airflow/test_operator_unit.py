"""The operator's re-attach and cancel decisions, driven try by try with a stand-in task
context (a dict for ``task_state_store``, a recorder for XCom) against a real emulator.

``dag.test()`` cannot clear a task or send it SIGTERM; these tests do the equivalent: a clear
raises the task instance's ``max_tries`` (as ``clear_task_instances`` does), and ``on_kill`` is
called from another thread while ``execute`` waits, as the task runner's signal handler would.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from runbridge.airflow_provider import LaunchRunOperator
from runbridge.airflow_provider.operators import STATE_KEY, Saved, generation
from runbridge.airflow_provider.triggers import human_duration
from runbridge.core.models import RunRef
from runbridge.core.planner import LaunchRecord
from runbridge.testing import Emulator, Script


class Store(dict):  # type: ignore[type-arg]
    def set(self, key: str, value: Any) -> None:
        self[key] = value


class TaskInstance(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value
        self.pushes.append(key)


def context(store: Store, try_number: int, max_tries: int) -> dict[str, Any]:
    ti = TaskInstance(
        dag_id="d",
        task_id="launch",
        run_id="r1",
        map_index=-1,
        try_number=try_number,
        max_tries=max_tries,
        start_date=None,
        xcoms={},
        pushes=[],
    )
    return {"ti": ti, "task_state_store": store}


def operator(**kwargs: Any) -> LaunchRunOperator:
    return LaunchRunOperator(
        task_id="launch",
        runbridge_conn_id="rb_rest",
        run_params={"job": "etl"},
        **{"retries": 1, "poll": 0.05, **kwargs},
    )


def test_a_retry_reattaches_a_clear_launches_anew(rest: Emulator) -> None:
    store = Store()
    first = operator().execute(context(store, try_number=1, max_tries=1))
    again = operator().execute(context(store, try_number=2, max_tries=1))  # a retry
    assert again["ref"] == first["ref"] and len(rest.launches) == 1
    # cleared after try 2: max_tries = try_number + retries = 3, so try 3 starts a generation
    cleared = operator().execute(context(store, try_number=3, max_tries=3))
    assert cleared["ref"] != first["ref"] and len(rest.launches) == 2
    keys = [r.headers.get("idempotency-key") for r in rest.requests_to("POST", "/jobs/")]
    assert keys == ["d/launch/r1/-1", "d/launch/r1/-1#1"]
    # the records say which generation saved them, and the max_tries it saw (no "starting"
    # record: the rest platform cannot look a launch up by key, its idempotency header
    # answers a repeated launch)
    assert [(r["generation"], r["max_tries"], r["action"]) for r in store[STATE_KEY]] == [
        (1, 1, "launched"),
        (1, 1, "reattached"),
        (2, 3, "launched"),
    ]
    # a retry after the clear stays in generation 2 and re-attaches to its run
    after = operator().execute(context(store, try_number=4, max_tries=3))
    assert after["ref"] == cleared["ref"] and len(rest.launches) == 2


def test_a_clear_cancels_the_old_run_still_going_before_launching_anew(rest: Emulator) -> None:
    """A deferred task cleared before a triggerer ran its trigger gets no on_kill: the new
    try, a new generation, cancels the old run (still going) before its own launch; with
    cancel_on_kill=False it leaves it going. A retry (same generation) never cancels."""
    rest.script(*(Script([("running", 60.0)], final="succeeded") for _ in range(4)))
    store = Store()
    first = operator(wait_for_completion=False).execute(context(store, 1, 1))
    retried = operator(wait_for_completion=False).execute(context(store, 2, 1))  # a retry
    assert retried["ref"] == first["ref"] and rest.cancels == []
    cleared = operator(wait_for_completion=False).execute(context(store, 3, 3))
    assert rest.cancels == [first["ref"]["id"]] and cleared["ref"] != first["ref"]
    actions = [(r["generation"], r["action"], r["ref"]) for r in store[STATE_KEY]]
    assert actions[-2:] == [
        (2, "cancelled", f"rest:{first['ref']['id']}"),
        (2, "launched", f"rest:{cleared['ref']['id']}"),
    ]
    # cleared again, the user not wanting kills to cancel: the run is left going
    keep = operator(wait_for_completion=False, cancel_on_kill=False)
    again = keep.execute(context(store, 4, 5))
    assert rest.cancels == [first["ref"]["id"]] and again["ref"] != cleared["ref"]


def test_editing_retries_between_tries_is_not_a_clear(rest: Emulator) -> None:
    """Only a clear writes max_tries: lowering ``retries`` in the DAG between two tries (the
    old reckoning, max_tries - retries + 1, took that for a clear) re-attaches."""
    store = Store()
    first = operator(retries=2).execute(context(store, try_number=1, max_tries=2))
    again = operator(retries=0).execute(context(store, try_number=2, max_tries=2))
    assert again["ref"] == first["ref"] and len(rest.launches) == 1


@pytest.mark.parametrize(
    ("saved", "max_tries", "retries", "expected"),
    [
        ([], 5, 1, 1),  # no records: the first generation, whatever max_tries says
        ([(1, 1)], 1, 1, 1),  # a retry: max_tries unchanged
        ([(1, 1)], 1, 7, 1),  # retries edited in the DAG: still a retry
        ([(1, 1)], 3, 1, 2),  # a clear raised max_tries
        ([(1, 1), (2, 3)], 3, 0, 2),
        ([(2, 3)], 6, 1, 3),  # cleared again
        ([(1, None)], 1, 1, 1),  # a record saved before max_tries was kept: the old reckoning
        ([(1, None)], 3, 1, 3),
    ],
)
def test_generation_counts_changes_of_max_tries(
    saved: list[tuple[int, int | None]], max_tries: int, retries: int, expected: int
) -> None:
    records = [Saved(g, m, LaunchRecord("k", RunRef("rest", "x"), "launched")) for g, m in saved]
    assert generation(records, max_tries, retries) == expected


def test_a_failed_run_fails_for_good_unless_relaunch(rest: Emulator) -> None:
    rest.script(Script([], final="failed", message="boom"), Script([], final="failed"))
    store = Store()
    with pytest.raises(AirflowFailException, match="boom"):
        operator().execute(context(store, 1, 1))
    with pytest.raises(AirflowFailException, match="boom"):  # the retry takes it as it ended
        operator().execute(context(store, 2, 1))
    assert len(rest.launches) == 1
    with pytest.raises(AirflowException) as info:
        operator(relaunch_failed=True).execute(context(store, 2, 1))
    assert not isinstance(info.value, AirflowFailException)  # another retry could do better
    assert len(rest.launches) == 2


class ExecutingTry:
    """``op.execute`` of one try in a worker thread (on_kill comes from the test's thread, as
    from Airflow's signal handler): what it raised and when it ended."""

    def __init__(self, op: LaunchRunOperator, store: Store) -> None:
        self.errors: list[BaseException] = []
        self.ended: list[float] = []

        def run() -> None:
            try:
                op.execute(context(store, 1, 1))
            except BaseException as exc:
                self.errors.append(exc)
            self.ended.append(time.monotonic())

        self.thread = threading.Thread(target=run)
        self.thread.start()

    @staticmethod
    def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)


def test_on_kill_cancels_and_the_next_try_launches_anew(rest: Emulator) -> None:
    rest.script(Script([("running", 30.0)], final="succeeded"), Script([], final="succeeded"))
    store = Store()
    op = operator()
    attempt = ExecutingTry(op, store)
    attempt.until(lambda: len(store.get(STATE_KEY, [])) >= 2)
    op.on_kill()
    attempt.thread.join(10)
    errors = attempt.errors
    (run_id,) = rest.runs
    assert rest.cancels == [run_id]
    assert store[STATE_KEY][-1] == {
        "key": "d/launch/r1/-1",
        "ref": f"rest:{run_id}",
        "action": "cancelled",
        "generation": 1,
        "max_tries": 1,
    }
    assert errors and "CANCELLED" in str(errors[0])
    result = operator().execute(context(store, 2, 1))
    assert result["state"] == "SUCCEEDED" and result["ref"]["id"] != run_id
    keys = [r.headers.get("idempotency-key") for r in rest.requests_to("POST", "/jobs/")]
    assert keys == ["d/launch/r1/-1", "d/launch/r1/-1#1"]


class _HeldLock(logging.Handler):
    """A log handler that, like structlog's writer in a task process, takes a plain lock for
    each line; the test holds it in the thread that calls ``on_kill``, as a SIGTERM arriving
    mid-write does. A line logged in that thread while it holds the lock would deadlock:
    recorded instead of waited for."""

    def __init__(self) -> None:
        super().__init__()
        self.held_by: int | None = None
        self.would_deadlock: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() == self.held_by:
            self.would_deadlock.append(record.getMessage())


class _Watched:
    """The operator's (structlog) logger, each call also checked by a :class:`_HeldLock`."""

    def __init__(self, log: Any, handler: _HeldLock) -> None:
        self._target, self._handler = log, handler

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._handler.held_by:
                self._handler.would_deadlock.append(f"{name}: {args[:1]}")
            return method(*args, **kwargs)

        return call


def test_on_kill_in_the_sigterm_handler_takes_no_lock_and_ends_the_wait_at_once(
    rest: Emulator,
) -> None:
    """Airflow's SIGTERM handler calls on_kill in the task's main thread, wherever it was
    interrupted: on_kill must log nothing and talk to no one there (a lock the interrupted code
    holds would never be released: the deployment's user_kill cell hung 240 s), yet the run is
    cancelled and the wait, sleeping a 30 s poll, ends within seconds."""
    rest.script(Script([("running", 60.0)], final="succeeded"))
    store = Store()
    op = operator(poll=30.0)
    handler = _HeldLock()
    op._cached_logger = _Watched(op.log, handler)
    loggers = [logging.getLogger("runbridge")]
    for logger in loggers:
        logger.addHandler(handler)
    attempt = ExecutingTry(op, store)
    errors, ended = attempt.errors, attempt.ended
    try:
        attempt.until(lambda: len(store.get(STATE_KEY, [])) >= 1)
        time.sleep(0.3)  # the wait is asleep in its 30 s poll
        handler.held_by = threading.get_ident()
        began = time.monotonic()
        op.on_kill()
        returned = time.monotonic() - began
        handler.held_by = None
        attempt.thread.join(10)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert handler.would_deadlock == []
    assert returned < 0.5
    (run_id,) = rest.runs
    assert rest.cancels == [run_id]
    assert ended and ended[0] - began < 5.0, "the wait slept on after the cancel"
    assert errors and "CANCELLED" in str(errors[0])
    assert store[STATE_KEY][-1]["action"] == "cancelled"


def test_a_kill_during_the_launch_cancels_the_run_once_it_is_known(rest: Emulator) -> None:
    """SIGTERM while the launch request is out (the run exists, its answer has not come): the
    run is cancelled as soon as the launch returns, and the try ends (the deferrable operator
    does not defer it)."""
    rest.script(Script([("running", 60.0)], final="succeeded"))
    rest.inject(kind="delay", seconds=1.5, when="after", method="POST")
    store = Store()
    op = operator(deferrable=True)
    attempt = ExecutingTry(op, store)
    attempt.until(lambda: bool(rest.runs))
    op.on_kill()  # the launch's answer is still delayed
    attempt.thread.join(15)
    errors = attempt.errors
    (run_id,) = rest.runs
    assert rest.cancels == [run_id]
    assert errors and "CANCELLED" in str(errors[0]), errors
    assert [r["action"] for r in store[STATE_KEY]] == ["launched", "cancelled"]


def test_a_cancelled_record_leads_to_a_new_run(rest: Emulator) -> None:
    """Whatever cancelled it (a kill, run_timeout, a trigger), a run recorded as cancelled by
    runbridge is never re-attached to: the next try launches with a key never used."""
    old = rest.add_run(Script([("running", 30.0)], final="succeeded"), job="etl")
    store = Store(
        {
            STATE_KEY: [
                {
                    "key": "d/launch/r1/-1",
                    "ref": f"rest:{old.id}",
                    "action": "launched",
                    "generation": 1,
                },
                {
                    "key": "d/launch/r1/-1",
                    "ref": f"rest:{old.id}",
                    "action": "cancelled",
                    "generation": 1,
                },
            ]
        }
    )
    result = operator().execute(context(store, try_number=2, max_tries=1))
    assert result["state"] == "SUCCEEDED" and result["ref"]["id"] != old.id
    (launch,) = rest.requests_to("POST", "/jobs/")
    assert launch.headers.get("idempotency-key") == "d/launch/r1/-1#1"


def test_a_transient_first_status_on_a_retry_reattaches(rest: Emulator) -> None:
    """Try 1 stops waiting (wait_timeout); try 2 cannot read the run at first (503s past the
    request's retries): it re-attaches anyway, without a status, and waits it out."""
    rest.script(Script([("running", 1.5)], final="succeeded"))
    store = Store()
    with pytest.raises(AirflowException, match="wait_timeout"):
        operator(wait_timeout=0.2).execute(context(store, 1, 1))
    rest.inject(kind="status", status=503, method="GET", times=3)  # the whole retry budget
    ti_context = context(store, 2, 1)
    result = operator().execute(ti_context)
    assert result["state"] == "SUCCEEDED" and len(rest.launches) == 1
    assert rest.faults == []
    assert [r["action"] for r in store[STATE_KEY]] == ["launched", "reattached"]
    # the page was not known when it re-attached: pushed once the wait ended
    assert ti_context["ti"].xcoms["run_url"].endswith(result["ref"]["id"])


def test_relaunch_failed_gives_the_next_key(rest: Emulator) -> None:
    rest.script(
        Script([], final="failed"), Script([], final="failed"), Script([], final="succeeded")
    )
    store = Store()
    for try_number in (1, 2, 3):
        try:
            operator(relaunch_failed=True, retries=2).execute(context(store, try_number, 2))
        except AirflowException:
            pass
    keys = [r.headers.get("idempotency-key") for r in rest.requests_to("POST", "/jobs/")]
    assert keys == ["d/launch/r1/-1", "d/launch/r1/-1#1", "d/launch/r1/-1#2"]


def test_unreadable_records_fail_clearly(rest: Emulator) -> None:
    store = Store({STATE_KEY: {"generation": 1, "ref": "rest:x"}})
    with pytest.raises(ValueError, match="does not hold runbridge launch records"):
        operator().execute(context(store, 1, 1))
    assert rest.launches == []


def test_cancel_on_kill_false_leaves_the_run(rest: Emulator) -> None:
    rest.script(Script([("running", 30.0)], final="succeeded"))
    op = operator(cancel_on_kill=False, wait_for_completion=False)
    op.execute(context(Store(), 1, 1))
    op.on_kill()
    assert rest.cancels == []


def test_bad_arguments_fail_at_parse_time() -> None:
    with pytest.raises(ValueError, match="relaunch_failed"):
        operator(relaunch_failed="yes")
    with pytest.raises(ValueError, match="success"):
        operator(success=["RUNNING"])
    with pytest.raises(ValueError, match="wait_timeout"):
        operator(wait_timeout=-1)


def deferred_then_resumed(
    rest: Emulator, store: Store, **kwargs: Any
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One deferrable try: execute until it defers, run its trigger to its event, resume a
    new operator object (as Airflow does, in a new process) with the event."""
    from airflow.sdk.exceptions import TaskDeferred

    ctx = context(store, 1, 1)
    with pytest.raises(TaskDeferred) as deferred:
        operator(deferrable=True, **kwargs).execute(ctx)

    async def first_event() -> dict[str, Any]:
        async for event in deferred.value.trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    event = asyncio.run(first_event())
    return ctx, deferred.value, event


def test_run_url_is_pushed_once_across_a_deferral(rest: Emulator) -> None:
    """Issue 14 item 8: the resumed task pushed run_url again."""
    rest.script(Script([("running", 0.3)], final="succeeded"))
    ctx, deferred, event = deferred_then_resumed(rest, Store())
    result = operator(deferrable=True).execute_complete(ctx, event=event, **(deferred.kwargs or {}))
    assert result["state"] == "SUCCEEDED"
    assert ctx["ti"].pushes.count("run_url") == 1 and ctx["ti"].xcoms["run_url"]


def test_wait_timeout_counts_from_the_waits_start_in_a_human_duration(rest: Emulator) -> None:
    """Issue 14 item 8: the deferred message said '13.2156s', counted from the trigger's start."""
    rest.script(Script([("running", 60.0)], final="succeeded"))
    ctx, deferred, event = deferred_then_resumed(rest, Store(), wait_timeout=2)
    assert event["kind"] == "wait_timeout"
    resumed = operator(deferrable=True)
    with pytest.raises(AirflowException) as deferred_failure:
        resumed.execute_complete(ctx, event=event, **(deferred.kwargs or {}))
    in_worker = operator(wait_timeout=2)
    with pytest.raises(AirflowException) as worker_failure:
        in_worker.execute(context(Store(), 1, 1))
    for failure in (deferred_failure, worker_failure):
        text = str(failure.value)
        assert "still RUNNING when the wait ran out (wait_timeout 2 s)" in text, text
        assert "the run keeps going" in text
    # the failed try winding down past Airflow's task_success_overtime gets SIGTERM, whose
    # handler calls on_kill: the run wait_timeout promised to leave going stays going (seen in
    # the real deployment's wait_timeout cell)
    resumed.on_kill()
    in_worker.on_kill()
    assert rest.cancels == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "0.2 s"),
        (2, "2 s"),
        (13.2156, "13 s"),
        (60, "1 min"),
        (125, "2 min 5 s"),
        (3600, "1 h"),
        (5400, "1 h 30 min"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_the_operator_deep_copies() -> None:
    """Airflow deep-copies operators (a DAG's partial subset, a mapped task): nothing made in
    ``__init__`` may refuse it (on_kill's lock and inbox are made per try)."""
    import copy

    op = operator()
    assert copy.deepcopy(op).run_params == op.run_params
