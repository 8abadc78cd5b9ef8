"""The lume provider, sans-IO: canned run objects in, requests, states and typed metadata out.

Shapes follow docs/platforms/lume.md (the metadata object is the documented LumeRun schema).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runbridge import ConfigError, LaunchSpec, ProtocolError, RunRef, RunState
from runbridge.core.errors import AuthError, BadRequest, Conflict, NotSupported, RunNotFound
from runbridge.core.flows import FlowContext
from runbridge.core.providers.lume import (
    KEY_FIELD,
    STATES,
    Lume,
    LumeRunMetadata,
    StageError,
    TopError,
)
from runbridge.core.registry import create_provider
from runbridge.core.schedule import RetryPolicy

from .stepper import Canned, step

RID = "run_01HYE5ZJ7Q8ZK1N5C4W2T9B3XA"
REF = RunRef("lume", RID)
DOCS = Path(__file__).resolve().parents[3] / "docs" / "platforms" / "lume.md"

METADATA: dict[str, Any] = {
    "run": {
        "run_id": RID,
        "flow_version": "invoice_processor:v3",
        "source_path": "s3://my-invoices/new/batch-001.csv",
        "status": "PARTIAL_FAILED",
    },
    "pipeline": {
        "created_at": "2024-07-30T10:00:00Z",
        "completed_at": "2024-07-30T10:02:30Z",
        "duration_seconds": 150.0,
        "stages": {
            "sync_source_seconds": 20.5,
            "transform_seconds": 110.0,
            "sync_target_seconds": 19.5,
        },
    },
    "results": {
        "input_rows": 1000,
        "mapped_rows": 960,
        "rejected_rows": 40,
        "target_locations": {"mapped": "s3://out/mapped.csv", "rejects": "s3://out/rejects.csv"},
    },
    "validation": {
        "tests_executed": 50,
        "tests_failed": 3,
        "error_rate": 0.06,
        "top_errors": [
            {"error_code": "INVALID_DATE", "field": "due_date", "count": 25},
            {"error_code": "NEGATIVE_AMOUNT", "field": "amount", "count": 15},
        ],
    },
    "errors": [],
}


def run(status: str, metadata: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": RID,
        "status": status,
        "flow_version": "invoice_processor:v3",
        "source_path": "s3://my-invoices/new/batch-001.csv",
        "run_metadata": {"triggered_by": "cron"},
        "created_at": "2024-07-30T10:00:00Z",
        "updated_at": "2024-07-30T10:02:31Z",
        "metadata": {} if metadata is None else metadata,
        **extra,
    }


def with_status(status: str, **sections: Any) -> dict[str, Any]:
    meta = json.loads(json.dumps(METADATA))
    meta["run"]["status"] = status
    meta.update(sections)
    return meta


def get(provider: Lume, body: Any, status: int = 200) -> Any:
    requests, result = step(provider.status(REF), Canned(status, body))
    assert [(r.method, r.path) for r in requests] == [("GET", f"/runs/{RID}")]
    return result


# -- states --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("CREATED", RunState.PENDING),
        ("SYNCING_SOURCE", RunState.RUNNING),
        ("TRANSFORMING", RunState.RUNNING),
        ("SYNCING_TARGET", RunState.RUNNING),
        ("SUCCEEDED", RunState.SUCCEEDED),
        ("PARTIAL_FAILED", RunState.PARTIAL),
        ("FAILED", RunState.FAILED),
        ("CRASHED", RunState.FAILED),
        ("PENDING", RunState.PENDING),
        ("RUNNING", RunState.RUNNING),
        ("INCOMPLETE", RunState.PARTIAL),
        ("transforming", RunState.RUNNING),
        ("QUARANTINED", RunState.UNKNOWN),
    ],
)
def test_status_maps_every_raw_value(raw: str, state: RunState) -> None:
    status = get(Lume(), run(raw))
    assert (status.state, status.raw_state) == (state, raw)
    assert (status.ended_at is not None) == state.is_terminal
    assert status.created_at == datetime(2024, 7, 30, 10, 0, tzinfo=timezone.utc)


def test_docs_state_table_matches_the_mapping() -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` \|.*\| ([A-Z_]+) \|$", DOCS.read_text(), re.MULTILINE)
    assert dict(rows) == {raw: state.value for raw, state in STATES.items()}


def test_run_ids_are_quoted_into_the_path() -> None:
    requests, _ = step(Lume().status(RunRef("lume", "run/1 2")), Canned(body=run("CREATED")))
    assert requests[0].path == "/runs/run%2F1%202"


# -- outputs and typed metadata --------------------------------------------------------------
def test_succeeded_outputs_carry_the_metadata_and_the_typed_view_reads_it() -> None:
    meta = with_status("SUCCEEDED")
    status = get(Lume(run_url="https://app.lume.ai/runs/{run_id}"), run("SUCCEEDED", meta))
    assert status.state is RunState.SUCCEEDED and status.message is None
    assert status.url == f"https://app.lume.ai/runs/{RID}"
    assert status.outputs == {
        "metadata": meta,
        "flow_version": "invoice_processor:v3",
        "source_path": "s3://my-invoices/new/batch-001.csv",
        "run_metadata": {"triggered_by": "cron"},
    }
    json.dumps(status.to_dict())  # outputs stay plain JSON
    typed = Lume.metadata(status)
    assert typed.run.flow_version == "invoice_processor:v3"
    assert typed.pipeline.stages.transform_seconds == 110.0
    assert typed.pipeline.duration_seconds == 150.0
    assert typed.results.input_rows == 1000 and typed.results.rejected_rows == 40
    assert typed.results.rejected_ratio == pytest.approx(0.04)
    assert typed.results.target_locations.rejects == "s3://out/rejects.csv"
    assert typed.validation.top_errors == (
        TopError("INVALID_DATE", "due_date", 25),
        TopError("NEGATIVE_AMOUNT", "amount", 15),
    )
    assert status.ended_at == datetime(2024, 7, 30, 10, 2, 30, tzinfo=timezone.utc)


def test_typed_metadata_round_trips_to_the_documented_shape() -> None:
    typed = LumeRunMetadata.from_dict(METADATA)
    again = typed.to_dict()
    assert again["pipeline"]["created_at"] == "2024-07-30T10:00:00+00:00"
    again["pipeline"]["created_at"] = METADATA["pipeline"]["created_at"]
    again["pipeline"]["completed_at"] = METADATA["pipeline"]["completed_at"]
    assert again == METADATA
    assert LumeRunMetadata.from_dict(json.loads(json.dumps(typed.to_dict()))) == typed


@pytest.mark.parametrize(
    "junk",
    [
        None,
        [],
        "text",
        {"results": "x", "validation": {"top_errors": "x"}, "errors": {"a": 1}},
        {
            "results": {"input_rows": "1000", "rejected_rows": True},
            "pipeline": {"created_at": 5e20},
        },
        {"validation": {"top_errors": [1, {"count": 2.0}]}, "errors": [None, {"stage": 3}]},
    ],
)
def test_typed_metadata_is_lenient(junk: Any) -> None:
    typed = LumeRunMetadata.from_dict(junk)
    assert typed.results.rejected_ratio is None
    assert typed.pipeline.created_at is None
    assert all(isinstance(e, TopError) for e in typed.validation.top_errors)
    assert all(isinstance(e, StageError) for e in typed.errors)


def test_a_running_run_with_partial_metadata_is_fine() -> None:
    status = get(Lume(), run("TRANSFORMING", {"run": {"status": "TRANSFORMING"}}))
    assert status.state is RunState.RUNNING and status.ended_at is None
    assert Lume.metadata(status).results.input_rows is None


# -- failures ----------------------------------------------------------------------------------
def test_failed_message_lists_the_stage_errors() -> None:
    errors = [
        {"stage": "SYNCING_SOURCE", "error_code": "SOURCE_UNREACHABLE", "message": "timeout"},
        {"stage": "SYNCING_SOURCE", "error_code": "RETRY_EXHAUSTED"},
    ]
    status = get(Lume(), run("FAILED", with_status("FAILED", errors=errors)))
    assert status.state is RunState.FAILED
    assert status.message == (
        "SYNCING_SOURCE: SOURCE_UNREACHABLE: timeout; SYNCING_SOURCE: RETRY_EXHAUSTED"
    )
    assert Lume.metadata(status).errors[0] == StageError(
        "SYNCING_SOURCE", "SOURCE_UNREACHABLE", "timeout"
    )


def test_crashed_is_failed_and_says_so() -> None:
    status = get(Lume(), run("CRASHED"))
    assert (status.state, status.raw_state) == (RunState.FAILED, "CRASHED")
    assert status.message == "CRASHED (an internal Lume error): no error details reported"


# -- the PARTIAL_FAILED policy ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "state", "says"),
    [
        ("fail", RunState.PARTIAL, "40 of 1000 rows rejected (4.00%)"),
        ("accept", RunState.SUCCEEDED, "accepted (partial='accept')"),
        (0.05, RunState.SUCCEEDED, "accepted (at most 5.00% rejected)"),
        ("0.04", RunState.SUCCEEDED, "accepted (at most 4.00% rejected)"),
        (0.039, RunState.PARTIAL, "not accepted (more than 3.90% rejected)"),
        (0, RunState.PARTIAL, "not accepted"),
    ],
)
def test_partial_policy(policy: Any, state: RunState, says: str) -> None:
    status = get(Lume(partial=policy), run("PARTIAL_FAILED", with_status("PARTIAL_FAILED")))
    assert (status.state, status.raw_state) == (state, "PARTIAL_FAILED")
    assert status.message is not None and says in status.message
    assert "top errors: INVALID_DATE on due_date (25)" in status.message
    assert "rejects at s3://out/rejects.csv" in status.message
    assert status.is_terminal
    assert status.succeeded() is (state is RunState.SUCCEEDED)
    # the caller may still accept every partial run per call
    assert status.succeeded({RunState.SUCCEEDED, RunState.PARTIAL})


def test_ratio_policy_without_row_counts_does_not_accept() -> None:
    meta = with_status("PARTIAL_FAILED", results={"mapped_rows": 3})
    status = get(Lume(partial=0.5), run("PARTIAL_FAILED", meta))
    assert status.state is RunState.PARTIAL
    assert status.message is not None
    assert "some rows were rejected" in status.message and "needs the input" in status.message


def test_incomplete_from_the_flows_api_follows_the_same_policy() -> None:
    assert get(Lume(), run("INCOMPLETE")).state is RunState.PARTIAL
    assert get(Lume(partial="accept"), run("INCOMPLETE")).state is RunState.SUCCEEDED


# -- launch ------------------------------------------------------------------------------------
def test_launch_body_and_key_in_run_metadata() -> None:
    spec = LaunchSpec(
        {
            "flow_version": "invoice_processor:v3",
            "source_path": "s3://b/1.csv",
            "run_metadata": {"triggered_by": "airflow"},
            "webhook_url": "https://hooks.example/lume",
        },
        key="dag.task.run.0",
    )
    requests, ref = step(Lume().launch(spec), Canned(201, run("CREATED")))
    (post,) = requests
    assert (post.method, post.path) == ("POST", "/runs")
    assert post.json == {
        "flow_version": "invoice_processor:v3",
        "source_path": "s3://b/1.csv",
        "run_metadata": {"triggered_by": "airflow", KEY_FIELD: "dag.task.run.0"},
        "webhook_url": "https://hooks.example/lume",
    }
    assert not post.retryable  # a POST without an idempotency mechanism of ours
    assert ref == REF


def test_launch_without_key_sends_only_what_was_given() -> None:
    spec = LaunchSpec({"flow_version": "f:v1", "source_path": "p", "force_rerun": True})
    requests, _ = step(Lume(launch_path="/v2/runs").launch(spec), Canned(200, {"run_id": RID}))
    assert requests[0].path == "/v2/runs"
    assert requests[0].json == {"flow_version": "f:v1", "source_path": "p", "force_rerun": True}


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"source_path": "p"}, "flow_version"),
        ({"flow_version": "f:v1"}, "source_path"),
        ({"flow_version": " ", "source_path": "p"}, "flow_version"),
        ({"flow_version": "f", "source_path": 3}, "source_path"),
        ({"flow_version": "f", "source_path": "p", "run_metadata": ["x"]}, "run_metadata"),
        ({"flow_version": "f", "source_path": "p", "force_rerun": "yes"}, "force_rerun"),
    ],
)
def test_bad_launch_params_are_rejected_before_any_request(
    params: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        next(Lume().launch(LaunchSpec(params)))


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (Canned(201, {"status": "CREATED"}), ProtocolError, "id"),
        (Canned(201, ["x"]), ProtocolError, "id"),
        (
            Canned(409, {"detail": "source_path 'p' has already been processed"}),
            Conflict,
            "already",
        ),
        (Canned(404, {"detail": "Flow version 'f' not found"}), BadRequest, "flow_version"),
        (
            Canned(422, {"detail": [{"loc": ["body", "source_path"], "msg": "Field required"}]}),
            BadRequest,
            "source_path: Field required",
        ),
        (Canned(401, {"detail": "Invalid API key", "error_id": "e-1"}), AuthError, "error id e-1"),
    ],
)
def test_launch_answers(answer: Canned, error: type[Exception], match: str) -> None:
    spec = LaunchSpec({"flow_version": "f", "source_path": "p"})
    with pytest.raises(error, match=match):
        step(Lume().launch(spec), answer)


def test_status_errors() -> None:
    with pytest.raises(RunNotFound, match="not found"):
        get(Lume(), {"detail": f"Run '{RID}' not found"}, 404)
    with pytest.raises(ProtocolError, match="status"):
        get(Lume(), {"id": RID})


# -- options and capabilities ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"partial": "maybe"}, "partial"),
        ({"partial": 1.5}, "partial"),
        ({"partial": True}, "partial"),
        ({"status_path": "/runs"}, "status_path"),
        ({"status_path": "/runs/{id}"}, "status_path"),
        ({"status_path": "runs/{run_id}"}, "status_path"),
        ({"launch_path": "/flows/{flow}/runs"}, "launch_path"),
        ({"api_key_header": ""}, "api_key_header"),
        ({"run_url": "https://x/{nope}"}, "run_url"),
    ],
)
def test_bad_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Lume(**options)


def test_registry_options_auth_and_capabilities() -> None:
    provider = create_provider("lume", partial=0.1, status_path="/v2/runs/{run_id}")
    assert isinstance(provider, Lume) and provider.partial == 0.1
    assert provider.auth_headers("k") == {"lume-api-key": "k"}
    assert Lume(api_key_header="X-Api-Key").auth_headers("k") == {"X-Api-Key": "k"}
    assert provider.make_ref(RID) == REF  # no scope needed: run ids are global
    assert provider.join(REF, 10) is None
    assert not provider.supports_cancel and not provider.supports_find


def test_cancel_and_find_are_not_supported() -> None:
    ctx = FlowContext(Lume(), RetryPolicy(), clock=lambda: 0.0)
    with pytest.raises(NotSupported, match="lume runs cannot be cancelled"):
        next(ctx.cancel(REF))
    with pytest.raises(NotSupported):
        next(Lume().find(LaunchSpec({"flow_version": "f", "source_path": "p"}, key="k")))
