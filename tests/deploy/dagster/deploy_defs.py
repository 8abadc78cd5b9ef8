"""The code location of the Dagster matrix deployment: the two columns' jobs.

Loaded by the deployment's code server (``dagster api grpc --python-file``), never imported by
the test process. Each column is one job; the resource is configured at launch, so every
Dagster run names its own emulator (platform, URL, provider options) in its run config, and
retries and re-executions, which copy the run config, talk to the same one. The token is the
environment variable ``RUNBRIDGE_DEPLOY_TOKEN`` of the code server (and of the run workers it
starts), given in run config as ``{"env": "RUNBRIDGE_DEPLOY_TOKEN"}``: the UI shows the name.

Columns:

* ``dagster-op``: ``op_job``, a job with :func:`external_run_op` and the resource;
* ``dagster-asset``: ``asset_job``, a job materializing an :func:`external_run_asset`.

Both run their step in the run worker (``in_process_executor``): a cell then costs one process
start, not two, and terminating the run interrupts the step the same way (the run worker gets
SIGINT). The step's params and per-run options (``wait_timeout``, ``run_timeout``,
``cancel_on_kill``) are run config too.
"""

from __future__ import annotations

import dagster as dg

from runbridge.dagster_resources import (
    ExternalRunResource,
    external_run_asset,
    external_run_op,
)

external = external_run_op("external", {})


@dg.job(executor_def=dg.in_process_executor)
def op_job() -> None:
    """The ``dagster-op`` column."""
    external()


external_asset = external_run_asset(name="external_asset", params={})

asset_job = dg.define_asset_job(
    "asset_job", selection=[external_asset], executor_def=dg.in_process_executor
)
"""The ``dagster-asset`` column."""

defs = dg.Definitions(
    jobs=[op_job, asset_job],
    assets=[external_asset],
    resources={"external_run": ExternalRunResource.configure_at_launch()},
)
