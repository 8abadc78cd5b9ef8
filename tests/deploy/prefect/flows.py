"""The flows of the Prefect columns of the reliability matrix, deployed from this directory
(``flow.from_source(<this directory>, "flows.py:<flow>").deploy(...)`` on a process work pool)
and run by a real ``prefect worker`` in their own processes.

Both take the name of a saved ``RunbridgeCredentials`` block (the token stays in the block,
never in a flow run's parameters) and the cell's options. ``matrix_task`` is the
``prefect-task`` column: ``launch_and_wait`` submitted to the flow's thread pool, as a mapped
task is; ``matrix_job`` is the ``prefect-job`` column: an ``ExternalRunJob`` triggered and
awaited in the flow's own code. Each returns the run's final state.

Imports only runbridge and Prefect: the flow-run processes do not see the test package.
"""

from __future__ import annotations

from typing import Any, cast

from prefect import flow

from runbridge.prefect_blocks import ExternalRunJob, RunbridgeCredentials, launch_and_wait

POLL = 0.2


@flow(name="rb-matrix-task")
def matrix_task(
    block: str,
    params: dict[str, Any],
    wait_timeout: float | None = None,
    run_timeout: float | None = None,
    cancel_on_kill: bool = True,
) -> str:
    credentials = cast(RunbridgeCredentials, RunbridgeCredentials.load(block))
    future = launch_and_wait.submit(
        credentials,
        params,
        wait_timeout=wait_timeout,
        run_timeout=run_timeout,
        cancel_on_kill=cancel_on_kill,
        poll=POLL,
    )
    return future.result().state.value


@flow(name="rb-matrix-job")
def matrix_job(
    block: str,
    params: dict[str, Any],
    wait_timeout: float | None = None,
    run_timeout: float | None = None,
    cancel_on_kill: bool = True,
) -> str:
    job = ExternalRunJob(
        credentials=cast(RunbridgeCredentials, RunbridgeCredentials.load(block)),
        params=params,
        wait_timeout=wait_timeout,
        run_timeout=run_timeout,
        cancel_on_kill=cancel_on_kill,
        poll_interval=POLL,
        poll_max_interval=1.0,
    )
    run = job.trigger()
    return run.fetch_result().state.value
