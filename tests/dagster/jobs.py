"""Definitions that Dagster must reconstruct (re-execution, a code server for termination).

The emulator's URL comes from ``RUNBRIDGE_DAGSTER_TEST_URL``, set by the test before Dagster
loads this file (the code server and run worker inherit it).
"""

from __future__ import annotations

import dagster as dg

from runbridge.dagster_resources import ExternalRunResource, external_run_op
from runbridge.testing.rest import REST_CONFIG

URL_ENV = "RUNBRIDGE_DAGSTER_TEST_URL"

resource = ExternalRunResource(
    platform="rest",
    base_url=dg.EnvVar(URL_ENV),
    options=REST_CONFIG,
    poll_interval=0.05,
    poll_max_interval=0.1,
    poll_backoff=1.0,
)

nightly = external_run_op("nightly", {"job": "nightly"})


@dg.job(resource_defs={"external_run": resource}, executor_def=dg.in_process_executor)
def nightly_job() -> None:
    nightly()


@dg.job(
    resource_defs={"external_run": resource.model_copy(update={"request_attempts": 1})},
    executor_def=dg.in_process_executor,
)
def fragile_job() -> None:
    """nightly, with a resource that tries each request once (a 503 is seen at once)."""
    nightly()


long_running = external_run_op("long_running", {"job": "long"})


@dg.job(resource_defs={"external_run": resource})
def long_job() -> None:
    """Runs with the default (multiprocess) executor, as a deployment would."""
    long_running()


defs = dg.Definitions(jobs=[nightly_job, fragile_job, long_job])
