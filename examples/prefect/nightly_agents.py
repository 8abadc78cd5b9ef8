"""runbridge in Prefect: agent runs on LangGraph Platform from a flow, against the emulator.

Run it locally (no LangGraph account needed)::

    runbridge emulate langgraph --port 2024 &
    python examples/prefect/nightly_agents.py

With no Prefect server configured, Prefect starts a temporary one for the run; with yours
(``PREFECT_API_URL``), register the blocks once (``prefect block register -m
runbridge.prefect_blocks``) and watch the runs, their logs and artifacts in the UI.

Against a real LangGraph deployment, set ``RUNBRIDGE_URL`` to it and ``LANGGRAPH_API_KEY``;
nothing else changes. Other platforms: another ``platform`` (and its ``options``) in the
credentials, and that platform's launch parameters.
"""

from __future__ import annotations

import os

from prefect import flow, unmapped

from runbridge import RunStatus
from runbridge.prefect_blocks import ExternalRunJob, RunbridgeCredentials, launch_and_wait


def credentials() -> RunbridgeCredentials:
    # In production: RunbridgeCredentials.load("agents"), saved once or made in the Prefect UI.
    return RunbridgeCredentials(
        platform="langgraph",
        base_url=os.environ.get("RUNBRIDGE_URL", "http://127.0.0.1:2024"),
        token=os.environ.get("LANGGRAPH_API_KEY"),  # a SecretStr: never shown or logged
    )


@flow(log_prints=True)
def nightly_agents(topics: list[str]) -> dict[str, RunStatus]:
    """Research each topic with an agent run (in parallel), then one summary run."""
    conn = credentials()

    # One task per topic, mapped: the runs go in parallel over one connection pool. Each task
    # logs the run's URL and states and leaves a link and a status artifact; a retry of a task
    # re-attaches to its run instead of launching it again; cancelling this flow run (or a
    # timeout) cancels the runs still going.
    research = launch_and_wait.with_options(retries=2, retry_delay_seconds=10).map(
        unmapped(conn),
        [{"assistant_id": "agent", "input": {"input": {"topic": t, "sleep": 1}}} for t in topics],
        wait_timeout=unmapped(3600),  # stop waiting after an hour (the run goes on)
        run_timeout=unmapped(2 * 3600),  # cancel a run older than two hours
    )
    statuses = dict(zip(topics, research.result(), strict=True))

    # The JobBlock form: what to launch and how to wait, as a block you can save and reuse.
    summary = ExternalRunJob(
        credentials=conn,
        params={"assistant_id": "agent", "input": {"input": {"summarize": topics, "sleep": 1}}},
        wait_timeout=3600,
    )
    run = summary.trigger()
    print(f"summary run: {run.url or run.ref.to_string()}")
    statuses["summary"] = run.fetch_result()  # raises RunFailed with the platform's message

    for name, status in statuses.items():
        print(f"{name}: {status.state.value} in {status.ref.to_string()}")
    return statuses


if __name__ == "__main__":
    nightly_agents(["pricing", "churn", "support backlog"])
