"""The op and asset factories under the real Dagster, against the emulators: metadata, failure,
success policy, typed outputs, logs, timeouts, and re-attach on retries and re-executions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from runbridge.core import RunState, RunStatus
from runbridge.dagster_resources import (
    ExternalRunResource,
    external_run_asset,
    external_run_op,
)
from runbridge.testing import Emulator, Relay, Script, create_emulator
from runbridge.testing.rest import REST_CONFIG
from tests.dagster import jobs
from tests.dagster.conftest import resource_for

TOKEN = "rb-secret-token-4242"
QUICK = Script([("queued", 0.05), ("running", 0.2)], final="succeeded", outputs={"rows": 42})
SLOW = Script([("queued", 0.05), ("running", 1.0)], final="succeeded", outputs={"rows": 7})
LONG = Script([("queued", 0.05), ("running", 600.0)], final="succeeded")


@pytest.fixture
def emu(relay: Relay) -> Iterator[Emulator]:
    """A fresh rest emulator that requires TOKEN, behind the module's relay."""
    yield relay.swap(create_emulator("rest", token=TOKEN))
    relay.target = None


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RB_TEST_TOKEN", TOKEN)
    return "RB_TEST_TOKEN"


def resources(emu: Emulator, **fields: Any) -> dict[str, Any]:
    fields.setdefault("token", dg.EnvVar("RB_TEST_TOKEN") if emu.token else None)
    return {"external_run": resource_for(emu, **fields)}


def step_failure(result: dg.ExecuteInProcessResult) -> Any:
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.step_failure_data


def messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.message for entry in instance.all_logs(run_id)]


def run_config(step: str, **config: Any) -> dict[str, Any]:
    return {"ops": {step: {"config": config}}}


# -- success and failure ---------------------------------------------------------------------
def test_asset_materializes_with_run_metadata_and_logs(
    emu: Emulator, instance: dg.DagsterInstance, token_env: str
) -> None:
    emu.script(QUICK)
    report = external_run_asset(name="report", params={"job": "nightly"})
    result = dg.materialize([report], resources=resources(emu), instance=instance)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("report")
    metadata = materialization.metadata
    (run_id,) = emu.runs
    assert metadata["run_url"] == dg.MetadataValue.url(f"{emu.base_url}/ui/runs/{run_id}")
    assert metadata["run_ref"] == dg.MetadataValue.text(f"rest:{run_id}")
    assert metadata["state"] == dg.MetadataValue.text("SUCCEEDED")
    assert metadata["raw_state"] == dg.MetadataValue.text("succeeded")
    assert isinstance(metadata["duration_seconds"], dg.FloatMetadataValue)
    assert metadata["duration_seconds"].value == pytest.approx(0.25, abs=0.05)
    assert metadata["output/rows"] == dg.MetadataValue.int(42)
    # the context logger: launch with the URL, state changes, final summary
    logged = messages(instance, result.run_id)
    url = f"{emu.base_url}/ui/runs/{run_id}"
    assert any(m.startswith(f"Launched rest:{run_id}: {url}") for m in logged)
    assert any(m == f"rest:{run_id}: RUNNING (running)" for m in logged)
    assert any(m.startswith(f"rest run {run_id} ended SUCCEEDED (succeeded) after") for m in logged)
    # the token is in no log line nor metadata
    everything = repr(instance.all_logs(result.run_id))
    assert TOKEN not in everything
    assert emu.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_op_returns_the_terminal_status(emu: Emulator, token_env: str) -> None:
    emu.script(QUICK)
    nightly = external_run_op("nightly", {"job": "nightly"})

    @dg.job
    def job() -> None:
        nightly()

    result = job.execute_in_process(resources=resources(emu))
    status = result.output_for_node("nightly")
    assert isinstance(status, RunStatus)
    assert status.state is RunState.SUCCEEDED and status.outputs == {"rows": 42}
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert output.step_output_data.metadata["run_url"].value == status.url


def test_failed_run_raises_failure_with_message_and_metadata(emu: Emulator, token_env: str) -> None:
    failing = Script([("queued", 0.05)], final="failed", message="disk full")
    emu.script(failing, failing)
    report = external_run_asset(
        name="report", params={"job": "nightly"}, retry_policy=dg.RetryPolicy(max_retries=2)
    )
    with pytest.raises(dg.Failure, match=r"ended FAILED \(failed\).*disk full"):
        dg.materialize([report], resources=resources(emu))
    result = dg.materialize([report], resources=resources(emu), raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    assert "disk full" in failure.user_failure_data.description
    metadata = failure.user_failure_data.metadata
    assert metadata["state"].value == "FAILED" and metadata["message"].value == "disk full"
    assert metadata["run_url"].value.startswith(f"{emu.base_url}/ui/runs/")
    # a retry would re-attach to the same ended run: the Failure does not ask for one
    assert len(emu.launches) == 2  # one per materialize, no retries


@pytest.mark.parametrize(("success", "passes"), [(None, False), (["SUCCEEDED", "PARTIAL"], True)])
def test_success_policy_and_typed_outputs_lume(
    relay: Relay, success: list[str] | None, passes: bool
) -> None:
    emu = relay.swap(create_emulator("lume"))
    steps = [("CREATED", 0.03), ("TRANSFORMING", 0.05)]
    emu.script(Script(steps, final="PARTIAL_FAILED"))
    kwargs: dict[str, Any] = {"success": success} if success else {}
    invoices = external_run_asset(
        name="invoices",
        params={"flow_version": "invoice_processor:v3", "source_path": "s3://invoices/b1.csv"},
        **kwargs,
    )
    result = dg.materialize([invoices], resources=resources(emu), raise_on_error=False)
    assert result.success is passes
    if passes:
        metadata = result.asset_materializations_for_node("invoices")[0].metadata
    else:
        metadata = step_failure(result).user_failure_data.metadata
    assert metadata["state"].value == "PARTIAL"
    assert metadata["raw_state"].value == "PARTIAL_FAILED"
    # Lume's row counts, deep in its metadata object, are typed numbers
    assert metadata["output/metadata.results.input_rows"] == dg.MetadataValue.int(100)
    assert metadata["output/metadata.results.rejected_rows"] == dg.MetadataValue.int(5)


def test_wandb_summary_metrics_are_typed(relay: Relay) -> None:
    emu = relay.swap(create_emulator("wandb"))
    emu.script(
        Script(
            [("pending", 0.05), ("running", 0.1)],
            final="finished",
            outputs={"val_loss": 0.12, "epoch": 10, "best": True},
        )
    )
    options = {"entity": "runbridge", "project": "demo", "queue": "default"}
    train = external_run_asset(name="model", params={"docker_image": "trainer:latest"})
    result = dg.materialize([train], resources=resources(emu, options=options))
    metadata = result.asset_materializations_for_node("model")[0].metadata
    assert metadata["output/summary.val_loss"] == dg.MetadataValue.float(0.12)
    assert metadata["output/summary.epoch"] == dg.MetadataValue.int(10)
    assert metadata["output/summary.best"] == dg.MetadataValue.bool(True)
    assert metadata["state"].value == "SUCCEEDED" and metadata["raw_state"].value == "finished"
    relay.target = None


def test_params_from_context_and_config(emu: Emulator, token_env: str) -> None:
    emu.script(QUICK)
    daily = external_run_asset(
        name="daily",
        params=lambda context: {"job": "daily", "day": context.partition_key},
        partitions_def=dg.StaticPartitionsDefinition(["2026-11-24", "2026-11-25"]),
    )
    result = dg.materialize(
        [daily],
        resources=resources(emu),
        partition_key="2026-11-25",
        run_config=run_config("daily", params={"full": True}),
    )
    assert result.success
    assert emu.launches == [{"day": "2026-11-25", "full": True}]
    (create,) = [r for r in emu.requests if r.method == "POST"]
    assert create.path == "/api/v1/jobs/daily/runs"
    assert create.headers["idempotency-key"] == f"dagster:{result.run_id}:daily"


def test_own_asset_body_with_resource_run(emu: Emulator, token_env: str) -> None:
    emu.script(QUICK)

    @dg.asset
    def scored(context, external_run: ExternalRunResource) -> Any:
        result = external_run.run(context, {"job": "score"})
        rows = result.status.outputs["rows"]
        return result.materialize_result(metadata={"rows_doubled": rows * 2})

    result = dg.materialize([scored], resources=resources(emu))
    metadata = result.asset_materializations_for_node("scored")[0].metadata
    assert metadata["rows_doubled"].value == 84 and metadata["output/rows"].value == 42


# -- the two deadlines ----------------------------------------------------------------------
def test_wait_timeout_fails_the_step_and_leaves_the_run_going(
    emu: Emulator, token_env: str
) -> None:
    emu.script(LONG)
    report = external_run_asset(name="report", params={"job": "nightly"}, wait_timeout=0.3)
    result = dg.materialize([report], resources=resources(emu), raise_on_error=False)
    failure = step_failure(result)
    assert "keeps going" in failure.user_failure_data.description
    assert failure.user_failure_data.metadata["state"].value == "RUNNING"
    assert emu.cancels == []


def test_run_timeout_cancels_the_run(emu: Emulator, token_env: str) -> None:
    emu.script(LONG)
    report = external_run_asset(name="report", params={"job": "nightly"}, run_timeout=0.3)
    result = dg.materialize([report], resources=resources(emu), raise_on_error=False)
    failure = step_failure(result)
    assert failure.user_failure_data.metadata["state"].value == "TIMED_OUT"
    assert "run_timeout" in failure.user_failure_data.description
    assert emu.cancels == list(emu.runs)


# -- re-attach -----------------------------------------------------------------------------
@pytest.mark.parametrize("idempotency", [True, False], ids=["keyed", "record-only"])
def test_retry_reattaches_to_the_run_it_launched(
    emu: Emulator, instance: dg.DagsterInstance, token_env: str, idempotency: bool
) -> None:
    """Each attempt's wait times out before the run ends; the retries re-attach to the one
    run. Without the platform's idempotency support, the recorded reference alone does it."""
    emu.script(SLOW)
    launch = dict(REST_CONFIG["launch"])
    if not idempotency:
        del launch["idempotency_header"]
    report = external_run_asset(
        name="report",
        params={"job": "nightly"},
        wait_timeout=0.3,
        retry_policy=dg.RetryPolicy(max_retries=10, delay=0.1),
    )
    result = dg.materialize(
        [report],
        resources=resources(emu, options={**REST_CONFIG, "launch": launch}),
        instance=instance,
    )
    assert result.success
    assert len(emu.launches) == 1
    assert emu.cancels == []
    logged = messages(instance, result.run_id)
    assert sum(m.startswith("Re-attached to rest:") for m in logged) >= 2
    assert result.asset_materializations_for_node("report")[0].metadata["output/rows"].value == 7


def test_relaunch_failed_on_retry(emu: Emulator, token_env: str) -> None:
    emu.script(Script([("queued", 0.05)], final="failed", message="flaky"), QUICK)
    report = external_run_asset(
        name="report",
        params={"job": "nightly"},
        relaunch_failed=True,
        retry_policy=dg.RetryPolicy(max_retries=1),
    )
    result = dg.materialize([report], resources=resources(emu))
    assert result.success and len(emu.launches) == 2
    keys = [r.headers["idempotency-key"] for r in emu.requests if r.method == "POST"]
    assert keys == [f"dagster:{result.run_id}:report", f"dagster:{result.run_id}:report#1"]


@pytest.fixture
def job_env(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jobs.URL_ENV, emu.base_url)
    emu.token = None  # the reconstructed job's resource has no token


def test_reexecution_from_failure_reattaches(
    emu: Emulator, instance: dg.DagsterInstance, job_env: None
) -> None:
    emu.script(SLOW)
    job = dg.reconstructable(jobs.nightly_job)
    first = dg.execute_job(
        job, instance, run_config=run_config("nightly", wait_timeout=0.2), raise_on_error=False
    )
    assert not first.success and len(emu.launches) == 1
    again = dg.execute_job(
        job,
        instance,
        run_config=run_config("nightly", wait_timeout=30.0),
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
    )
    assert again.success
    assert len(emu.launches) == 1 and emu.cancels == []
    assert any(
        m.startswith("Re-attached to rest:") and first.run_id in m
        for m in messages(instance, again.run_id)
    )


def test_reexecution_of_a_successful_step_launches_a_new_run(
    emu: Emulator, instance: dg.DagsterInstance, job_env: None
) -> None:
    emu.script(QUICK, QUICK)
    job = dg.reconstructable(jobs.nightly_job)
    with dg.execute_job(job, instance) as first:
        assert first.success
    with dg.execute_job(
        job,
        instance,
        reexecution_options=dg.ReexecutionOptions(parent_run_id=first.run_id),
    ) as again:
        assert again.success
    keys = [r.headers["idempotency-key"] for r in emu.requests if r.method == "POST"]
    assert keys == [f"dagster:{first.run_id}:nightly", f"dagster:{first.run_id}:nightly#1"]
    assert len(emu.launches) == 2


def test_reexecution_takes_an_ended_run_as_it_ended(
    emu: Emulator, instance: dg.DagsterInstance, job_env: None
) -> None:
    """The step's wait timed out; the run then succeeded: re-execution takes that success."""
    emu.script(Script([("running", 0.4)], final="succeeded"))
    job = dg.reconstructable(jobs.nightly_job)
    first = dg.execute_job(
        job, instance, run_config=run_config("nightly", wait_timeout=0.1), raise_on_error=False
    )
    assert not first.success
    (run,) = emu.runs.values()
    while not run.state(emu.now())[1]:
        time.sleep(0.05)
    again = dg.execute_job(
        job,
        instance,
        run_config=run_config("nightly"),
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
    )
    assert again.success and len(emu.launches) == 1
    assert any("taken as it ended" in m for m in messages(instance, again.run_id))


def test_reexecution_after_a_failed_run_needs_relaunch_failed(
    emu: Emulator, instance: dg.DagsterInstance, job_env: None
) -> None:
    emu.script(Script([("queued", 0.05)], final="failed", message="bad input"), QUICK)
    job = dg.reconstructable(jobs.nightly_job)
    first = dg.execute_job(job, instance, raise_on_error=False)
    assert not first.success
    # re-executed as it is, the step takes the failed run as it ended (and says how not to)
    again = dg.execute_job(
        job,
        instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
        raise_on_error=False,
    )
    assert not again.success and len(emu.launches) == 1
    failure = next(e for e in again.all_events if e.event_type_value == "STEP_FAILURE")
    assert "set relaunch_failed" in failure.step_failure_data.user_failure_data.description
    # with relaunch_failed, it launches a new run (with a new key)
    third = dg.execute_job(
        job,
        instance,
        run_config=run_config("nightly", relaunch_failed=True),
        reexecution_options=dg.ReexecutionOptions.from_failure(again.run_id, instance),
    )
    assert third.success and len(emu.launches) == 2
    keys = [r.headers["idempotency-key"] for r in emu.requests if r.method == "POST"]
    assert keys == [f"dagster:{first.run_id}:nightly", f"dagster:{first.run_id}:nightly#1"]


# -- the shared policy (core's start), through Dagster -----------------------------------------
def test_a_transient_error_on_the_first_status_does_not_fail_the_step(
    emu: Emulator, instance: dg.DagsterInstance, token_env: str
) -> None:
    """The run was launched; reading its first status fails (503, not retried): the step
    waits for it all the same, and the wait's next check sees it."""
    emu.script(QUICK)
    emu.inject(kind="status", status=503, method="GET", times=1)
    report = external_run_asset(name="report", params={"job": "nightly"})
    result = dg.materialize(
        [report], resources=resources(emu, request_attempts=1), instance=instance
    )
    assert result.success and len(emu.launches) == 1
    assert [f.fault.label for f in emu.injected] == ["status 503 before"]
    logged = messages(instance, result.run_id)
    assert any("503" in m and m.endswith("trying again") for m in logged)
    (run_id,) = emu.runs
    assert any(m == f"Launched rest:{run_id}" for m in logged)  # the record, before the status


def test_a_reexecution_whose_first_status_read_fails_reattaches(
    emu: Emulator, instance: dg.DagsterInstance, job_env: None
) -> None:
    """The re-executed step cannot read the run it re-attaches to (a 503): it re-attaches
    anyway, never relaunches, and succeeds when the run does."""
    emu.script(SLOW)
    job = dg.reconstructable(jobs.fragile_job)
    first = dg.execute_job(
        job, instance, run_config=run_config("nightly", wait_timeout=0.2), raise_on_error=False
    )
    assert not first.success and len(emu.launches) == 1
    emu.inject(kind="status", status=503, method="GET", times=1)
    again = dg.execute_job(
        job,
        instance,
        run_config=run_config("nightly", wait_timeout=30.0),
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
    )
    assert again.success
    assert len(emu.launches) == 1 and emu.cancels == [] and len(emu.injected) == 1
    logged = messages(instance, again.run_id)
    assert any(m.startswith("Re-attached to rest:") and first.run_id in m for m in logged)


def test_run_timeout_records_the_cancel_and_the_retry_launches_a_new_run(
    emu: Emulator, instance: dg.DagsterInstance, token_env: str
) -> None:
    """runbridge cancelled the run (run_timeout) and said so in the event log: the retry does
    not re-attach to the cancelled run but launches the next key."""
    emu.script(LONG, QUICK)
    report = external_run_asset(
        name="report",
        params={"job": "nightly"},
        run_timeout=0.3,
        retry_policy=dg.RetryPolicy(max_retries=1),
    )
    result = dg.materialize([report], resources=resources(emu), instance=instance)
    assert result.success and len(emu.launches) == 2
    first_id = next(iter(emu.runs))
    assert emu.cancels == [first_id]
    keys = [r.headers["idempotency-key"] for r in emu.requests_to("POST", "/jobs/")]
    assert keys == [f"dagster:{result.run_id}:report", f"dagster:{result.run_id}:report#1"]
    logged = messages(instance, result.run_id)
    assert f"Cancelled rest:{first_id} (run_timeout)" in logged


def test_the_run_timeout_failure_carries_cancelled_by_runbridge(
    emu: Emulator, token_env: str
) -> None:
    emu.script(LONG)
    report = external_run_asset(name="report", params={"job": "nightly"}, run_timeout=0.3)
    result = dg.materialize([report], resources=resources(emu), raise_on_error=False)
    metadata = step_failure(result).user_failure_data.metadata
    assert metadata["cancelled_by_runbridge"] == dg.MetadataValue.bool(True)
    assert metadata["state"].value == "TIMED_OUT"


def test_error_window_reaches_the_wait(
    emu: Emulator, instance: dg.DagsterInstance, token_env: str
) -> None:
    """The resource's error_window bounds how long the step's wait tolerates an outage."""
    emu.script(LONG)
    emu.inject(kind="status", status=503, method="GET", times=10_000)
    report = external_run_asset(name="report", params={"job": "nightly"})
    begun = time.monotonic()
    result = dg.materialize(
        [report],
        resources=resources(emu, error_window=0.5, request_attempts=1),
        instance=instance,
        raise_on_error=False,
    )
    took = time.monotonic() - begun
    assert not result.success
    failure = step_failure(result)
    assert "503" in str(failure.error.message) or any(
        "503" in str(c.message) for c in (failure.error.cause, failure.error.context) if c
    )
    assert len(emu.launches) == 1 and emu.cancels == []  # a poll error never relaunches
    checks = [r for r in emu.requests if r.method == "GET"]
    assert 2 <= len(checks) < 100  # it kept trying through the window, then gave up
    assert took < 20


def test_an_outage_inside_the_error_window_is_tolerated(
    emu: Emulator, instance: dg.DagsterInstance, token_env: str
) -> None:
    emu.script(Script([("queued", 0.05), ("running", 0.6)], final="succeeded"))
    emu.inject(kind="status", status=503, method="GET", times=6)
    report = external_run_asset(name="report", params={"job": "nightly"})
    result = dg.materialize(
        [report], resources=resources(emu, error_window=30.0, request_attempts=1)
    )
    assert result.success and len(emu.launches) == 1
    assert len(emu.injected) == 6
