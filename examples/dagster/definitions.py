"""runbridge in Dagster: an asset trained on W&B, an op job, and a sensor, against the emulator.

Run it locally (no W&B account needed)::

    runbridge emulate wandb --port 8765 &
    export RUNBRIDGE_URL=http://127.0.0.1:8765 WANDB_API_KEY=local-dev
    dagster dev -f examples/dagster/definitions.py
    # or headless:
    dagster asset materialize -f examples/dagster/definitions.py --select model

Against the real W&B, point ``RUNBRIDGE_URL`` at https://api.wandb.ai and set your entity,
project and Launch queue in ``options``. Nothing else changes.
"""

import os

import dagster as dg

from runbridge import RunStatus
from runbridge.dagster_resources import (
    ExternalRunResource,
    external_run_asset,
    external_run_op,
    external_run_sensor,
)

# -- where the runs go: configuration only, the token from the environment ---------------------
wandb = ExternalRunResource(
    platform="wandb",
    base_url=os.environ.get("RUNBRIDGE_URL", "http://127.0.0.1:8765"),
    token=dg.EnvVar("WANDB_API_KEY"),  # Dagster shows the variable's name, never its value
    options={"entity": "runbridge", "project": "demo", "queue": "default"},
    poll_interval=1.0,
    poll_max_interval=15.0,
    error_window=1800,  # a wait rides out up to 30 minutes of W&B API errors
)

# -- an asset: a training run on a W&B Launch queue ---------------------------------------------
# Its materializations carry the run's URL, state, duration and summary metrics as typed
# metadata (output/summary.val_loss is a float, plotted across materializations). A retry
# re-attaches to the run already launched instead of queueing a second training run.
model = external_run_asset(
    name="model",
    params={"docker_image": "trainer:latest", "config": {"epochs": 10}},
    wait_timeout=4 * 3600,  # stop waiting (the run goes on; a retry re-attaches)
    run_timeout=8 * 3600,  # cancel a run this old (a retry then launches a new one)
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30),
    group_name="ml",
    kinds={"wandb"},
)

# -- an op job: evaluation after training, with per-run options in the launchpad ---------------
evaluate = external_run_op(
    "evaluate",
    params={"docker_image": "evaluator:latest"},
    success=["SUCCEEDED"],
)


@dg.op
def announce(context: dg.OpExecutionContext, status: RunStatus) -> None:
    context.log.info(f"evaluation {status.ref} finished: {dict(status.outputs)}")


@dg.job
def evaluation_job() -> None:
    announce(evaluate())


# -- a sensor: start a job when watched runs end (each run once) -------------------------------
@dg.op
def report(context: dg.OpExecutionContext) -> None:
    tags = context.run.tags
    context.log.info(f"{tags['runbridge/ref']} ended {tags['runbridge/state']}")


@dg.job
def report_job() -> None:
    report()


def watched(context: dg.SensorEvaluationContext) -> list[str]:
    """Runs launched elsewhere, e.g. ``RUNBRIDGE_WATCH="runbridge/demo/abc123,..."``."""
    return [ref for ref in os.environ.get("RUNBRIDGE_WATCH", "").split(",") if ref]


finished_runs = external_run_sensor(
    name="finished_runs",
    refs=watched,
    job=report_job,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(
    assets=[model],
    jobs=[evaluation_job, report_job],
    sensors=[finished_runs],
    resources={"external_run": wandb},
)
