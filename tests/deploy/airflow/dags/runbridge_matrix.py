"""The reliability matrix's DAGs, copied into the test deployment's dags folder.

One DAG per column kind and retry count, each with one task ``run``; everything a cell
varies is in the DAG run's conf, read when the task starts (and again when a deferred task
resumes), so one DAG serves every row:

* ``conn_id``: the ``runbridge`` connection (an emulator of the cell's platform);
* ``params``: the launch parameters (operator columns);
* ``run_ref``: the run to watch (sensor column);
* ``options``: operator arguments that Airflow does not template, set on the task before it
  runs: ``wait_timeout``, ``run_timeout``, ``cancel_on_kill``, ``relaunch_failed``, ``poll``,
  ``error_window`` (operator), ``timeout``, ``poke_interval`` (sensor).

``retries`` is read by the scheduler from the parsed DAG, so it is the one thing that takes a
DAG of its own (``..._retry``: one retry, no delay).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from runbridge.airflow_provider import LaunchRunOperator, RunSensor
from runbridge.airflow_provider._common import poll_schedule, seconds


def _conf(context: Any) -> dict[str, Any]:
    dag_run = context["dag_run"]
    return dict(dag_run.conf or {})


class MatrixLaunch(LaunchRunOperator):
    """``LaunchRunOperator`` whose per-cell arguments come from the DAG run's conf."""

    def _apply(self, context: Any) -> None:
        conf = _conf(context)
        self.runbridge_conn_id = conf["conn_id"]
        self.run_params = dict(conf.get("params") or {})
        options = dict(conf.get("options") or {})
        if "wait_timeout" in options:
            self.wait_timeout = seconds(options["wait_timeout"], "wait_timeout")
        if "run_timeout" in options:
            self.run_timeout = seconds(options["run_timeout"], "run_timeout")
        if "error_window" in options:
            self.error_window = seconds(options["error_window"], "error_window")
        if "poll" in options:
            self.poll = poll_schedule(options["poll"])
        if "cancel_on_kill" in options:
            self.cancel_on_kill = bool(options["cancel_on_kill"])
        if "relaunch_failed" in options:
            self.relaunch_failed = bool(options["relaunch_failed"])

    def execute(self, context: Any) -> dict[str, Any]:
        self._apply(context)
        return super().execute(context)

    def resume_execution(
        self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any
    ) -> Any:
        self._apply(context)
        return super().resume_execution(next_method, next_kwargs, context)


class MatrixSensor(RunSensor):
    """``RunSensor`` whose run, connection and timing come from the DAG run's conf."""

    def _apply(self, context: Any) -> None:
        conf = _conf(context)
        self.runbridge_conn_id = conf["conn_id"]
        self.run = conf["run_ref"]
        options = dict(conf.get("options") or {})
        if "timeout" in options:
            self.timeout = float(options["timeout"])
        if "poke_interval" in options:
            self.poke_interval = float(options["poke_interval"])

    def execute(self, context: Any) -> Any:
        self._apply(context)
        return super().execute(context)

    def resume_execution(
        self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any
    ) -> Any:
        self._apply(context)
        return super().resume_execution(next_method, next_kwargs, context)


def _dag(dag_id: str) -> DAG:
    return DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,
        max_active_runs=64,
        max_active_tasks=64,
        tags=["runbridge-matrix"],
    )


for _retries, _suffix in ((0, ""), (1, "_retry")):
    with _dag(f"rb_operator{_suffix}"):
        MatrixLaunch(task_id="run", runbridge_conn_id="unset", deferrable=False, retries=_retries)
    with _dag(f"rb_deferrable{_suffix}"):
        MatrixLaunch(task_id="run", runbridge_conn_id="unset", deferrable=True, retries=_retries)
    with _dag(f"rb_sensor{_suffix}"):
        MatrixSensor(
            task_id="run",
            run="unset",
            runbridge_conn_id="unset",
            poke_interval=1,
            timeout=600,
            mode="poke",
            retries=_retries,
        )
