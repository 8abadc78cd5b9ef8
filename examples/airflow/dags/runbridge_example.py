"""runbridge in an Airflow DAG, against a local LangGraph emulator.

In one shell::

    runbridge emulate langgraph --port 2024

In another (a throwaway Airflow home; see examples/airflow/README.md)::

    export AIRFLOW_HOME=$(mktemp -d) AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__DAGS_FOLDER=$PWD/examples/airflow/dags
    export AIRFLOW_CONN_RUNBRIDGE_DEFAULT='{"conn_type": "runbridge", "host": "http://127.0.0.1:2024", "extra": {"platform": "langgraph"}}'
    airflow db migrate
    python examples/airflow/dags/runbridge_example.py      # runs the DAG once with dag.test()

``ask`` launches an agent run and waits for it in the triggerer (deferrable), ``kick_off`` only
launches one, ``watch`` waits for that one with a sensor, and ``report`` reads both results.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from runbridge.airflow_provider import LaunchRunOperator, RunSensor

with DAG(
    "runbridge_example",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1),
    params={"question": Param("What is runbridge?", type="string")},
    tags=["runbridge"],
) as dag:
    # Launch, then wait deferred. A retry re-attaches to this run instead of launching another;
    # killing the task, or its execution_timeout, cancels the run.
    ask = LaunchRunOperator(
        task_id="ask",
        runbridge_conn_id="runbridge_default",
        run_params={
            "assistant_id": "agent",
            # templated: rendered before the launch; "sleep" makes the emulated agent take 2 s
            "input": {"question": "{{ params.question }}", "asked_on": "{{ ds }}", "sleep": 2},
        },
        deferrable=True,
        wait_timeout=timedelta(minutes=30),  # stop waiting (the run keeps going)
        run_timeout=timedelta(hours=1),  # cancel a run that takes longer than this
        execution_timeout=timedelta(hours=2),
        retries=2,
    )

    # Launch without waiting, then watch the run with a sensor (its reference comes from XCom).
    kick_off = LaunchRunOperator(
        task_id="kick_off",
        run_params={"assistant_id": "agent", "input": {"job": "nightly", "sleep": 1}},
        wait_for_completion=False,
    )
    watch = RunSensor(
        task_id="watch",
        run="{{ ti.xcom_pull(task_ids='kick_off', key='run_ref') }}",
        deferrable=True,
        poke_interval=5,
        timeout=3600,
    )

    @task
    def report(answer: dict, nightly: dict) -> str:
        # each is RunStatus.to_dict(): state, raw_state, url, message, outputs, timestamps...
        line = f"ask: {answer['state']} {answer['outputs']}; nightly: {nightly['state']}"
        print(line)
        return line

    kick_off >> watch
    report(ask.output, watch.output)


if __name__ == "__main__":
    dag.test()
