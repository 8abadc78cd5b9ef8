"""Reading back what a flow run left in the Prefect API: logs, artifacts, task runs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler


def flow_run_logs(flow_run_id: UUID) -> list[str]:
    """Every log line of the flow run and its task runs, once shipped to the API."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def flow_run_artifacts(flow_run_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def task_runs(flow_run_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def task_key(task_run: Any, credentials: Any, params: dict[str, Any], n: int = 0) -> str:
    """The launch key runbridge derives for ``task_run``'s n-th launch of ``params``."""
    from runbridge.prefect_blocks import _runtime

    identity = _runtime.RunIdentity(
        task_run.flow_run_id, task_run.id, 1, task_run.name, task_key=task_run.task_key
    )
    launch = _runtime.launch_fingerprint(credentials.platform, credentials.base_url, params)
    return f"{_runtime.base_key(identity, launch)}-{n}"
