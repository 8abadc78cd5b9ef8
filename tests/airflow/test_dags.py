"""The operator and the sensor in real DAGs, run with ``dag.test()`` against the emulators."""

from __future__ import annotations

import json
import os
import textwrap
import time
from typing import Any

import pytest

from runbridge.testing import Emulator, Relay, Script

from .conftest import TOKEN, load_dag, write_dag

HEADER = """
import pendulum
from datetime import timedelta
from airflow.sdk import DAG
from runbridge.airflow_provider import LaunchRunOperator, RunSensor
"""


def run_dag(name: str, tasks: str, **dag_args: Any) -> Any:
    """Write a one-DAG file ``name`` with ``tasks`` (code inside ``with DAG(...)``), run it."""
    args = ", ".join(f"{k}={v!r}" for k, v in dag_args.items())
    body = HEADER + (
        f"with DAG({name!r}, schedule=None, start_date=pendulum.datetime(2024, 1, 1)"
        f"{', ' + args if args else ''}):\n"
    )
    body += textwrap.indent(textwrap.dedent(tasks).strip("\n"), "    ") + "\n"
    dag = load_dag(write_dag(name, body), name)
    return dag.test()


def ti_of(dag_run: Any, task_id: str) -> Any:
    return dag_run.get_task_instance(task_id)


def xcom(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key
            )
        ).first()
        return XComModel.deserialize_value(row) if row is not None else None


FAST = "poll=0.1"


@pytest.mark.parametrize("deferrable", [False, True])
def test_success(rest: Emulator, deferrable: bool) -> None:
    rest.script(Script([("queued", 0.1), ("running", 0.3)], final="succeeded", outputs={"rows": 7}))
    name = f"ok_{'deferred' if deferrable else 'worker'}"
    dr = run_dag(
        name,
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          deferrable={deferrable}, {FAST})
        """,
    )
    assert ti_of(dr, "launch").state == "success"
    result = xcom(dr, "launch")
    assert result["state"] == "SUCCEEDED" and result["outputs"] == {"rows": 7}
    assert len(rest.launches) == 1
    run_id = result["ref"]["id"]
    assert xcom(dr, "launch", "run_ref") == f"rest:{run_id}"
    assert xcom(dr, "launch", "run_url").endswith(f"/ui/runs/{run_id}")
    # the "Run page" extra link, as the worker computed it for the UI
    assert xcom(dr, "launch", "_link_RunPageLink") == xcom(dr, "launch", "run_url")


@pytest.mark.parametrize("deferrable", [False, True])
def test_failure_fails_the_task_with_the_platform_message(
    rest: Emulator, deferrable: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    rest.script(Script([("running", 0.2)], final="failed", message="disk quota exceeded"))
    name = f"fail_{'deferred' if deferrable else 'worker'}"
    dr = run_dag(
        name,
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          deferrable={deferrable}, retries=2, {FAST})
        """,
    )
    ti = ti_of(dr, "launch")
    # relaunch_failed=False (the default): a retry would only find the same failed run, so
    # no retry
    assert ti.state == "failed" and ti.try_number == 1
    out = capfd.readouterr().out
    assert "AirflowFailException" in out and "disk quota exceeded" in out
    assert TOKEN not in out
    assert len(rest.launches) == 1


def test_relaunch_failed_launches_a_new_run_with_the_next_key(rest: Emulator) -> None:
    rest.script(
        Script([("running", 0.1)], final="failed", message="flaky"),
        Script([("running", 0.1)], final="succeeded"),
    )
    dr = run_dag(
        "relaunch",
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          relaunch_failed=True, retries=1, {FAST})
        """,
    )
    ti = ti_of(dr, "launch")
    assert ti.state == "success" and ti.try_number == 2
    assert len(rest.launches) == 2
    keys = [r.headers.get("idempotency-key") for r in rest.requests_to("POST", "/jobs/")]
    assert keys == [f"relaunch/launch/{dr.run_id}/-1", f"relaunch/launch/{dr.run_id}/-1#1"]


def test_templated_params_are_rendered(rest: Emulator) -> None:
    dr = run_dag(
        "templated",
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest",
                          run_params={{"job": "etl", "day": "{{{{ ds }}}}", "dag": "{{{{ dag.dag_id }}}}",
                                       "nested": {{"run": "{{{{ run_id }}}}"}}}},
                          {FAST})
        """,
    )
    assert ti_of(dr, "launch").state == "success"
    (body,) = rest.launches
    assert body["dag"] == "templated" and body["nested"]["run"] == dr.run_id
    assert body["day"] == dr.logical_date.strftime("%Y-%m-%d")
    assert rest.requests_to("POST", "/api/v1/jobs/etl/runs")


def test_wait_for_completion_false_then_sensor(rest: Emulator) -> None:
    rest.script(Script([("running", 0.5)], final="succeeded", outputs={"n": 1}))
    dr = run_dag(
        "launch_then_sense",
        """
        launch = LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={"job": "etl"},
                                   wait_for_completion=False)
        sense = RunSensor(task_id="sense", runbridge_conn_id="rb_rest", poke_interval=0.1,
                          run="{{ ti.xcom_pull(task_ids='launch', key='run_ref') }}")
        launch >> sense
        """,
    )
    assert xcom(dr, "launch")["state"] in ("PENDING", "RUNNING")
    assert ti_of(dr, "sense").state == "success"
    assert xcom(dr, "sense")["outputs"] == {"n": 1}
    assert xcom(dr, "sense", "run_url") == xcom(dr, "launch", "run_url")
    assert len(rest.launches) == 1


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_sensor_on_an_existing_run(rest: Emulator, mode: str) -> None:
    run = rest.add_run(Script([("running", 0.4)], final="succeeded"), job="elsewhere")
    args = "deferrable=True" if mode == "deferrable" else f"mode={mode!r}"
    dr = run_dag(
        f"sensor_{mode}",
        f"""
        RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run={run.id!r}, poke_interval=0.1,
                  timeout=30, {args})
        """,
    )
    assert ti_of(dr, "sense").state == "success"
    assert xcom(dr, "sense")["ref"]["id"] == run.id
    assert rest.launches == []


def test_sensor_fails_on_a_failed_run(rest: Emulator) -> None:
    run = rest.add_run(Script([], final="failed", message="boom"), job="elsewhere")
    dr = run_dag(
        "sensor_failed",
        f"""
        RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run="rest:{run.id}", poke_interval=0.1)
        """,
    )
    assert ti_of(dr, "sense").state == "failed"


def test_sensor_accepts_a_success_policy(rest: Emulator) -> None:
    run = rest.add_run(Script([], final="cancelled"), job="elsewhere")
    dr = run_dag(
        "sensor_policy",
        f"""
        RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run={run.id!r}, poke_interval=0.1,
                  success=["SUCCEEDED", "CANCELLED"])
        """,
    )
    assert ti_of(dr, "sense").state == "success"
    assert xcom(dr, "sense")["state"] == "CANCELLED"


def test_sensor_pokes_through_transient_errors(rest: Emulator) -> None:
    """A poke that cannot read the run (503s past the request's retries, core's one retry
    classification) checks again at the next poke instead of failing the sensor."""
    run = rest.add_run(Script([("running", 0.5)], final="succeeded"), job="elsewhere")
    rest.inject(kind="status", status=503, method="GET", times=7)
    dr = run_dag(
        "sensor_transient",
        f"""
        RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run={run.id!r},
                  poke_interval=0.1, timeout=30)
        """,
    )
    ti = ti_of(dr, "sense")
    assert ti.state == "success" and ti.try_number == 1
    assert rest.faults == []


def test_retry_after_a_crash_reattaches(rest: Emulator) -> None:
    """Try 1 launches and dies while waiting; try 2 follows the same run (one launch)."""
    rest.script(Script([("running", 1.0)], final="succeeded"))
    dr = run_dag(
        "crash_reattach",
        f"""
        class CrashingOperator(LaunchRunOperator):
            def _wait(self, client, ref):
                from airflow.sdk import get_current_context
                if get_current_context()["ti"].try_number == 1:
                    raise RuntimeError("simulated worker crash")
                return super()._wait(client, ref)

        CrashingOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                         retries=1, {FAST})
        """,
    )
    ti = ti_of(dr, "launch")
    assert ti.state == "success" and ti.try_number == 2
    assert len(rest.launches) == 1
    assert rest.cancels == []


def test_crash_between_launch_and_record_reattaches_by_key(langgraph: Emulator) -> None:
    """The run's reference never reached the task_state_store: the idempotency key finds it."""
    langgraph.script(Script([("running", 0.5)], final="success"))
    dr = run_dag(
        "crash_by_key",
        f"""
        class CrashingOperator(LaunchRunOperator):
            def _save(self, record):
                from airflow.sdk import get_current_context
                if record.ref is not None and get_current_context()["ti"].try_number == 1:
                    raise RuntimeError("simulated crash before the run was recorded")
                super()._save(record)

        CrashingOperator(task_id="launch", runbridge_conn_id="rb_langgraph", retries=1, {FAST},
                         run_params={{"assistant_id": "agent", "input": {{"q": "hi"}}}})
        """,
    )
    ti = ti_of(dr, "launch")
    assert ti.state == "success" and ti.try_number == 2
    assert len(langgraph.launches) == 1


@pytest.mark.parametrize("deferrable", [False, True])
def test_retry_after_a_transient_error_window_reattaches(rest: Emulator, deferrable: bool) -> None:
    """The platform stays unreachable past the operator's error window (in the worker or the
    trigger): the try fails, the retry re-attaches; a poll error never relaunches."""
    rest.script(Script([("running", 1.5)], final="succeeded"))
    rest.inject(kind="status", status=503, method="GET", times=20)
    name = f"transient_{'deferred' if deferrable else 'worker'}"
    dr = run_dag(
        name,
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          deferrable={deferrable}, retries=3, error_window=0.2, {FAST})
        """,
    )
    ti = ti_of(dr, "launch")
    assert ti.state == "success" and ti.try_number > 1
    assert len(rest.launches) == 1


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_retry_whose_first_status_read_fails_reattaches(rest: Emulator, deferrable: bool) -> None:
    """Core's shared policy through the operator: each try's first status read hits a 503
    three times (the connection's whole retry budget); try 1 still records its run, try 2
    re-attaches to it without its status and waits; neither fails on it, one launch."""
    rest.script(Script([("running", 1.0)], final="succeeded"))
    rest.inject(kind="status", status=503, method="GET", times=6)
    name = f"transient_first_{'deferred' if deferrable else 'worker'}"
    dr = run_dag(
        name,
        f"""
        class CrashingOperator(LaunchRunOperator):
            def _crash_on_try_1(self):
                from airflow.sdk import get_current_context
                if get_current_context()["ti"].try_number == 1:
                    raise RuntimeError("simulated worker crash")

            def _wait(self, client, ref):
                self._crash_on_try_1()
                return super()._wait(client, ref)

            def _defer(self, context, ref):
                self._crash_on_try_1()
                return super()._defer(context, ref)

        CrashingOperator(task_id="launch", runbridge_conn_id="rb_rest",
                         run_params={{"job": "etl"}}, deferrable={deferrable}, retries=1, {FAST})
        """,
    )
    ti = ti_of(dr, "launch")
    assert ti.state == "success" and ti.try_number == 2
    assert len(rest.launches) == 1 and rest.faults == []  # both first reads failed
    assert xcom(dr, "launch")["state"] == "SUCCEEDED"


@pytest.mark.parametrize("deferrable", [False, True])
def test_the_connections_error_window_reaches_the_wait(
    rest: Emulator,
    relays: dict[str, Relay],
    deferrable: bool,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``error_window`` in the connection's extra bounds the wait, in the worker and in the
    trigger (the default, 600 s, would keep this task waiting)."""
    connection = json.loads(os.environ["AIRFLOW_CONN_RB_REST"])
    connection["extra"]["error_window"] = 0.5
    monkeypatch.setenv("AIRFLOW_CONN_RB_IMPATIENT", json.dumps(connection))
    rest.script(Script([("running", 60.0)], final="succeeded"))
    rest.inject(kind="status", status=503, method="GET", times=10_000)
    name = f"conn_error_window_{'deferred' if deferrable else 'worker'}"
    started = time.monotonic()
    dr = run_dag(
        name,
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_impatient",
                          run_params={{"job": "etl"}}, deferrable={deferrable}, {FAST})
        """,
    )
    assert ti_of(dr, "launch").state == "failed"
    assert time.monotonic() - started < 30
    assert "PlatformUnavailable" in capfd.readouterr().out
    assert len(rest.launches) == 1 and rest.cancels == []


@pytest.mark.parametrize("deferrable", [False, True])
def test_execution_timeout_cancels_the_run(rest: Emulator, deferrable: bool) -> None:
    rest.script(Script([("running", 60.0)], final="succeeded"))
    name = f"exec_timeout_{'deferred' if deferrable else 'worker'}"
    dr = run_dag(
        name,
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          deferrable={deferrable}, execution_timeout=timedelta(seconds=3),
                          {FAST})
        """,
    )
    assert ti_of(dr, "launch").state == "failed"
    (run_id,) = rest.runs
    assert rest.cancels == [run_id]


@pytest.mark.parametrize("deferrable", [False, True])
def test_after_a_timeout_cancel_the_retry_launches_a_new_run(
    rest: Emulator, deferrable: bool
) -> None:
    rest.script(
        Script([("running", 60.0)], final="succeeded"),
        Script([("running", 0.2)], final="succeeded"),
    )
    name = f"timeout_retry_{'deferred' if deferrable else 'worker'}"
    dr = run_dag(
        name,
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          deferrable={deferrable}, execution_timeout=timedelta(seconds=3),
                          retries=1, {FAST})
        """,
    )
    ti = ti_of(dr, "launch")
    assert ti.state == "success" and ti.try_number == 2
    assert len(rest.cancels) == 1 and len(rest.launches) == 2


def test_run_timeout_cancels_and_the_retry_relaunches(rest: Emulator) -> None:
    rest.script(
        Script([("running", 60.0)], final="succeeded"),
        Script([("running", 0.2)], final="succeeded"),
    )
    dr = run_dag(
        "run_timeout",
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          run_timeout=1, retries=1, {FAST})
        """,
    )
    ti = ti_of(dr, "launch")
    assert ti.state == "success" and ti.try_number == 2
    assert len(rest.cancels) == 1 and len(rest.launches) == 2


@pytest.mark.parametrize("deferrable", [False, True])
def test_wait_timeout_leaves_the_run_going(rest: Emulator, deferrable: bool) -> None:
    rest.script(Script([("running", 60.0)], final="succeeded"))
    name = f"wait_timeout_{'deferred' if deferrable else 'worker'}"
    dr = run_dag(
        name,
        f"""
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_rest", run_params={{"job": "etl"}},
                          deferrable={deferrable}, wait_timeout=1, {FAST})
        """,
    )
    assert ti_of(dr, "launch").state == "failed"
    assert rest.cancels == []
    (run,) = rest.runs.values()
    assert not run.state(rest.now())[1]


def test_langgraph_run_deferred_uses_join(langgraph: Emulator) -> None:
    dr = run_dag(
        "langgraph_join",
        """
        LaunchRunOperator(task_id="launch", runbridge_conn_id="rb_langgraph", deferrable=True,
                          run_params={"assistant_id": "agent", "input": {"sleep": 0.6}})
        """,
    )
    assert ti_of(dr, "launch").state == "success"
    assert xcom(dr, "launch")["state"] == "SUCCEEDED"
    assert langgraph.requests_to("GET", "/join")
