"""The operator's re-attach and cancel decisions, driven try by try with a stand-in task
context (a dict for ``task_state_store``, a recorder for XCom) against a real emulator.

``dag.test()`` cannot clear a task or send it SIGTERM; these tests do the equivalent: a clear
raises the task instance's ``max_tries`` (as ``clear_task_instances`` does), and ``on_kill`` is
called from another thread while ``execute`` waits, as the task runner's signal handler would.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from runbridge.airflow_provider import LaunchRunOperator
from runbridge.testing import Emulator, Script


class Store(dict):  # type: ignore[type-arg]
    def set(self, key: str, value: Any) -> None:
        self[key] = value


class TaskInstance(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


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
    )
    return {"ti": ti, "task_state_store": store}


def operator(**kwargs: Any) -> LaunchRunOperator:
    return LaunchRunOperator(
        task_id="launch",
        conn_id="rb_rest",
        run_params={"job": "etl"},
        poll_interval=0.05,
        retries=1,
        **kwargs,
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
    assert keys == ["d/launch/r1/-1", "d/launch/r1/-1#3"]


def test_a_failed_run_fails_for_good_unless_relaunch(rest: Emulator) -> None:
    rest.script(Script([], final="failed", message="boom"), Script([], final="failed"))
    store = Store()
    with pytest.raises(AirflowFailException, match="boom"):
        operator().execute(context(store, 1, 1))
    with pytest.raises(AirflowFailException, match="boom"):  # the retry takes it as it ended
        operator().execute(context(store, 2, 1))
    assert len(rest.launches) == 1
    with pytest.raises(AirflowException) as info:
        operator(on_retry="relaunch").execute(context(store, 2, 1))
    assert not isinstance(info.value, AirflowFailException)  # another retry could do better
    assert len(rest.launches) == 2


def test_on_kill_cancels_and_the_next_try_launches_anew(rest: Emulator) -> None:
    rest.script(Script([("running", 30.0)], final="succeeded"), Script([], final="succeeded"))
    store = Store()
    op = operator()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(context(store, 1, 1))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 10
    while not store.get("runbridge_run", {}).get("ref") and time.monotonic() < deadline:
        time.sleep(0.02)
    op.on_kill()
    worker.join(10)
    (run_id,) = rest.runs
    assert rest.cancels == [run_id]
    assert store["runbridge_run"]["cancelled"] is True
    assert errors and "CANCELLED" in str(errors[0])
    result = operator().execute(context(store, 2, 1))
    assert result["state"] == "SUCCEEDED" and result["ref"]["id"] != run_id


def test_cancel_on_kill_false_leaves_the_run(rest: Emulator) -> None:
    rest.script(Script([("running", 30.0)], final="succeeded"))
    op = operator(cancel_on_kill=False, wait_for_completion=False)
    op.execute(context(Store(), 1, 1))
    op.on_kill()
    assert rest.cancels == []


def test_bad_arguments_fail_at_parse_time() -> None:
    with pytest.raises(ValueError, match="on_retry"):
        operator(on_retry="again")
    with pytest.raises(ValueError, match="success"):
        operator(success=["RUNNING"])
    with pytest.raises(ValueError, match="wait_timeout"):
        operator(wait_timeout=-1)
