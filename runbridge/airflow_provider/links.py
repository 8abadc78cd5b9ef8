"""The "Run page" extra link: the external run's page, read from the task's XCom.

The operator and the sensor push the run's URL (XCom key ``run_url``) as soon as they know
it, before waiting, so the link works while the task runs or is deferred, and after it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

__all__ = ["RUN_REF_KEY", "RUN_URL_KEY", "RunPageLink"]

RUN_URL_KEY = "run_url"
"""XCom key of the run's page URL (absent when the platform has no run page)."""
RUN_REF_KEY = "run_ref"
"""XCom key of the run reference, as a string (``RunRef.to_string()``), for templates such as
``{{ ti.xcom_pull(task_ids="launch", key="run_ref") }}``."""


class RunPageLink(BaseOperatorLink):
    """Link to the external run's page on its platform."""

    name = "Run page"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(ti_key=ti_key, key=RUN_URL_KEY)
        return url if isinstance(url, str) else ""
