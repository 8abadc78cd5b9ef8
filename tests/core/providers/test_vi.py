"""The vi provider, sans-IO: canned Vi run documents in, requests and values out.

Shapes follow docs/platforms/vi.md (vi-sdk 0.1.0b7).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runbridge import ConfigError, LaunchSpec, ProtocolError, RunNotFound, RunRef, RunState
from runbridge.core.errors import AuthError
from runbridge.core.providers.vi import METADATA_KEY, STATES, Vi, run_for_key

from .stepper import Canned, step

ORG = "org-123"
R = "7d3f6c1e-0b5a-4c8e-9f21-3a4b5c6d7e8f"
REF = RunRef("vi", R, {"organization_id": ORG})
PATH = f"/workspaces/{ORG}/runs/{R}"
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z in epoch ms
FLOW = {
    "name": "f1",
    "schema": "v1",
    "tolerations": {},
    "settings": {},
    "blocks": [{"block": "train", "settings": {}, "style": {}}],
}
DOCS = Path(__file__).resolve().parents[3] / "docs" / "platforms" / "vi.md"


def cond(condition: str, status: str = "Reached", at: int = T0, **extra: Any) -> dict[str, Any]:
    return {"condition": condition, "status": status, "lastTransitionTime": at, **extra}


def run(*conditions: dict[str, Any], run_id: str = R, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Run",
        "workspaceId": ORG,
        "runId": run_id,
        "spec": {"flow": FLOW, **spec},
        "status": {"log": "", "observedGeneration": 1, "conditions": list(conditions)},
        "metadata": {
            "timeCreated": T0,
            "lastUpdated": T0 + 5000,
            "generation": 1,
            "attributes": {},
        },
        "selfLink": f"/workspaces/{ORG}/runs/{run_id}",
        "etag": 'W/"1"',
    }


def not_found(what: str = "Run") -> Canned:
    return Canned(404, {"error": "NotFound", "message": f"{what} not found"})


# -- states ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("conditions", "raw", "state"),
    [
        ([cond("Pending")], "Pending", RunState.PENDING),
        ([cond("Pending"), cond("Running", at=T0 + 1)], "Running", RunState.RUNNING),
        ([cond("Running"), cond("Succeeded", at=T0 + 9)], "Succeeded", RunState.SUCCEEDED),
        ([cond("Failed")], "Failed", RunState.FAILED),
        ([cond("Error")], "Error", RunState.FAILED),
        ([cond("Cancelled")], "Cancelled", RunState.CANCELLED),
        ([cond("Started", "Waiting")], "Started/Waiting", RunState.PENDING),
        ([cond("Started", "Reached")], "Started/Reached", RunState.RUNNING),
        ([cond("Finished", "Waiting")], "Finished/Waiting", RunState.RUNNING),
        ([cond("Finished", "Reached")], "Finished/Reached", RunState.SUCCEEDED),
        ([cond("Finished", "FailedReach")], "Finished/FailedReach", RunState.FAILED),
        ([cond("Started", "FailedReach")], "Started/FailedReach", RunState.FAILED),
        ([], "", RunState.PENDING),
        ([cond("Running"), cond("Preempted", at=T0 + 1)], "Preempted", RunState.UNKNOWN),
        ([cond("All", "Reached")], "All/Reached", RunState.UNKNOWN),
    ],
)
def test_state_is_the_latest_condition(
    conditions: list[dict[str, Any]], raw: str, state: RunState
) -> None:
    requests, status = step(Vi().status(REF), Canned(body=run(*conditions)))
    assert [(r.method, r.path) for r in requests] == [("GET", PATH)]
    assert requests[0].headers == {"Organization-Id": ORG}
    assert (status.raw_state, status.state) == (raw, state)
    assert (status.ended_at is not None) == state.is_terminal


def test_error_and_failed_are_both_failed_but_keep_their_raw_value_and_message() -> None:
    _, failed = step(
        Vi().status(REF), Canned(body=run(cond("Failed", at=T0 + 7000, message="loss is NaN")))
    )
    _, errored = step(
        Vi().status(REF), Canned(body=run(cond("Error", reason="NodeLost", at=T0 + 7000)))
    )
    assert failed.state is errored.state is RunState.FAILED
    assert (failed.raw_state, failed.message) == ("Failed", "loss is NaN")
    assert (errored.raw_state, errored.message) == ("Error", "NodeLost")
    _, both = step(
        Vi().status(REF), Canned(body=run(cond("Error", reason="NodeLost", message="gpu gone")))
    )
    assert both.message == "NodeLost: gpu gone"
    assert failed.ended_at == datetime(2025, 1, 1, 0, 0, 7, tzinfo=timezone.utc)


def test_a_later_transition_time_wins_over_list_position() -> None:
    newest_first = run(cond("Succeeded", at=T0 + 9), cond("Running", at=T0 + 1))
    _, status = step(Vi().status(REF), Canned(body=newest_first))
    assert status.raw_state == "Succeeded"
    same_time = run(cond("Running"), cond("Cancelled"))
    _, tie = step(Vi().status(REF), Canned(body=same_time))
    assert tie.raw_state == "Cancelled"  # a tie goes to the last entry


def test_outputs_expose_flow_killed_at_log_url_and_times() -> None:
    body = run(
        cond("Running"),
        cond("Cancelled", at=T0 + 3000),
        killedAt=T0 + 2000,
        trainingProject="tp-1",
    )
    body["status"]["log"] = "https://logs.example/r1.txt"
    body["metadata"]["attributes"] = {"team": "cv"}
    _, status = step(Vi().status(REF), Canned(body=body))
    assert status.outputs == {
        "flow": FLOW,
        "training_project": "tp-1",
        "killed_at": T0 + 2000,
        "log_url": "https://logs.example/r1.txt",
        "conditions": body["status"]["conditions"],
        "attributes": {"team": "cv"},
    }
    assert status.url == "https://logs.example/r1.txt"  # the only link the API gives
    assert status.created_at == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert status.updated_at == datetime(2025, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
    assert status.ended_at == datetime(2025, 1, 1, 0, 0, 3, tzinfo=timezone.utc)


def test_run_url_template_and_a_log_path_that_is_not_a_link() -> None:
    body = run(cond("Running"))
    body["status"]["log"] = "gs://bucket/logs/r1"
    _, plain = step(Vi().status(REF), Canned(body=body))
    assert plain.url is None and plain.outputs["log_url"] == "gs://bucket/logs/r1"
    provider = Vi(run_url="https://vi.example/org/{organization_id}/runs/{run_id}")
    _, linked = step(provider.status(REF), Canned(body=body))
    assert linked.url == f"https://vi.example/org/{ORG}/runs/{R}"


def test_a_body_that_is_not_a_run_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="expected a run object"):
        step(Vi().status(REF), Canned(body={"items": []}))


def test_the_docs_state_table_lists_every_raw_value() -> None:
    rows = dict(re.findall(r"^\| `([^`]*)` \|[^|]*\| (\w+) \|", DOCS.read_text(), re.M))
    assert rows == {raw: state.value for raw, state in STATES.items()}


# -- references and options --------------------------------------------------------------------
def test_references_take_the_organization_from_the_option_or_a_link() -> None:
    provider = Vi(organization_id=ORG)
    assert provider.make_ref(R) == REF
    assert provider.check_ref(RunRef("vi", R, {"organization_id": "other"})).scope == {
        "organization_id": "other"
    }
    assert Vi().check_ref(RunRef("vi", f"/workspaces/{ORG}/runs/{R}")) == REF
    with pytest.raises(ConfigError, match="needs organization_id"):
        Vi().make_ref(R)
    with pytest.raises(ConfigError, match="not 'vi'"):
        provider.check_ref(RunRef("wandb", R, {"organization_id": ORG}))


def test_auth_headers_and_bad_options() -> None:
    assert Vi().auth_headers("dtvi_x") == {"Authorization": "Bearer dtvi_x"}
    assert Vi(organization_id=ORG).auth_headers("dtvi_x") == {
        "Authorization": "Bearer dtvi_x",
        "Organization-Id": ORG,
    }
    with pytest.raises(ConfigError, match="organization_id"):
        Vi(organization_id="")
    with pytest.raises(ConfigError, match="run_url"):
        Vi(run_url="https://x/{nope}")


# -- launch and find -------------------------------------------------------------------------------
def test_launch_puts_a_run_under_the_id_derived_from_the_key() -> None:
    spec = LaunchSpec(
        {"flow": FLOW, "training_project": "tp-1", "metadata": {"team": "cv"}}, key="dag.t.1"
    )
    run_id = run_for_key("dag.t.1")
    path = f"/workspaces/{ORG}/runs/{run_id}"
    requests, ref = step(
        Vi(organization_id=ORG).launch(spec),
        not_found(),
        Canned(201, run(cond("Pending"), run_id=run_id)),
    )
    probe, put = requests
    assert (probe.method, probe.path) == ("GET", path)
    assert (put.method, put.path) == ("PUT", path)
    assert put.json == {
        "spec": {"flow": FLOW, "trainingProject": "tp-1"},
        "metadata": {"attributes": {"team": "cv", METADATA_KEY: "dag.t.1"}},
    }
    assert put.headers == {"Organization-Id": ORG}
    assert not put.retryable  # an unclear PUT is followed by find, not resent over a run
    assert ref == RunRef("vi", run_id, {"organization_id": ORG})
    assert run_for_key("dag.t.1") == run_id != run_for_key("dag.t.2")


def test_launch_never_puts_over_an_existing_run() -> None:
    spec = LaunchSpec({"flow": FLOW, "organization_id": ORG}, key="k")
    run_id = run_for_key("k")
    requests, ref = step(Vi().launch(spec), Canned(body=run(cond("Running"), run_id=run_id)))
    assert [r.method for r in requests] == ["GET"]
    assert ref.id == run_id


@pytest.mark.parametrize("answer", ["document", "bare"])
def test_launch_from_a_flow_id_takes_its_spec(answer: str) -> None:
    flow_doc = {"kind": "Flow", "workspaceId": ORG, "flowId": "fl-1", "spec": FLOW}
    spec = LaunchSpec({"flow_id": "fl-1"}, key="k")
    requests, _ = step(
        Vi(organization_id=ORG).launch(spec),
        not_found(),
        Canned(body=flow_doc if answer == "document" else FLOW),
        Canned(201, run(cond("Pending"), run_id=run_for_key("k"))),
    )
    assert [(r.method, r.path) for r in requests][1] == ("GET", f"/workspaces/{ORG}/flows/fl-1")
    assert requests[2].json["spec"] == {"flow": FLOW}
    with pytest.raises(ProtocolError, match="no flow spec"):
        step(Vi(organization_id=ORG).launch(spec), not_found(), Canned(body={"kind": "Flow"}))


def test_launch_without_a_key_uses_a_random_id() -> None:
    requests, ref = step(
        Vi(organization_id=ORG).launch(LaunchSpec({"flow": FLOW})),
        not_found(),
        Canned(201, run(cond("Pending"))),
    )
    assert requests[0].path == requests[1].path
    assert "metadata" not in requests[1].json
    assert ref == REF  # the id the server answered with


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"flow": FLOW, "input": {}}, "unknown launch param"),
        ({}, "exactly one of"),
        ({"flow": FLOW, "flow_id": "x"}, "exactly one of"),
        ({"flow": {"name": "f"}}, "missing schema, tolerations, settings, blocks"),
        ({"flow": FLOW, "metadata": {"n": 1}}, "strings to strings"),
        ({"flow": FLOW, "training_project": ""}, "training_project"),
    ],
)
def test_bad_launch_params_are_config_errors(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        next(Vi(organization_id=ORG).launch(LaunchSpec(params, key="k")))


def test_launch_needs_an_organization() -> None:
    with pytest.raises(ConfigError, match="needs an organization"):
        next(Vi().launch(LaunchSpec({"flow": FLOW})))


def test_find_is_a_get_of_the_key_id() -> None:
    spec = LaunchSpec({"flow": FLOW}, key="k")
    provider = Vi(organization_id=ORG)
    assert provider.can_find(spec) and provider.supports_find and provider.auto_key
    requests, found = step(provider.find(spec), not_found())
    assert requests[0].path == f"/workspaces/{ORG}/runs/{run_for_key('k')}"
    assert found is None
    _, found = step(provider.find(spec), Canned(body=run(cond("Pending"), run_id="x")))
    assert found == RunRef("vi", "x", {"organization_id": ORG})
    with pytest.raises(AuthError):
        step(provider.find(spec), Canned(401, {"message": "Unauthorized"}))


# -- kill -----------------------------------------------------------------------------------------
def test_kill_patches_killed_at_with_the_servers_time() -> None:
    date = "Wed, 01 Jan 2025 00:01:00 GMT"
    requests, result = step(
        Vi().cancel(REF),
        Canned(body=run(cond("Running")), headers={"date": date}),
        Canned(body=run(cond("Running"), killedAt=T0 + 60_000)),
    )
    assert result is None
    get, patch = requests
    assert (get.method, patch.method, patch.path) == ("GET", "PATCH", PATH)
    assert patch.json == {"spec": {"killedAt": T0 + 60_000}}
    assert patch.retryable and patch.headers == {"Organization-Id": ORG}


def test_kill_without_a_date_header_uses_the_runs_last_update() -> None:
    requests, _ = step(
        Vi().cancel(REF), Canned(body=run(cond("Running"))), Canned(body=run(cond("Running")))
    )
    assert requests[1].json == {"spec": {"killedAt": T0 + 5000}}


def test_killing_an_ended_run_sends_nothing() -> None:
    requests, _ = step(Vi().cancel(REF), Canned(body=run(cond("Succeeded"))))
    assert [r.method for r in requests] == ["GET"]


def test_killing_an_unknown_run_is_run_not_found() -> None:
    with pytest.raises(RunNotFound, match="Run not found"):
        step(Vi().cancel(REF), not_found())


# -- listing ----------------------------------------------------------------------------------------
def page(ids: list[str], next_page: str | None) -> Canned:
    items = [run(cond("Running"), run_id=i) for i in ids]
    return Canned(body={"items": items, "nextPage": next_page, "prevPage": None})


def test_list_runs_follows_next_page_tokens() -> None:
    requests, runs = step(
        Vi(organization_id=ORG).list_runs(limit=None, page_size=2),
        page(["a", "b"], "t2"),
        page(["c", "d"], "t3"),
        page(["e"], None),
    )
    assert [r.params for r in requests] == [{"s": 2}, {"s": 2, "p": "t2"}, {"s": 2, "p": "t3"}]
    assert {r.path for r in requests} == {f"/workspaces/{ORG}/runs"}
    assert [s.ref.id for s in runs] == ["a", "b", "c", "d", "e"]
    assert all(
        s.ref.scope == {"organization_id": ORG} and s.state is RunState.RUNNING for s in runs
    )


def test_list_runs_stops_at_the_limit_and_on_a_repeated_token() -> None:
    requests, runs = step(Vi().list_runs(organization_id=ORG, limit=3), page(["a", "b", "c"], "t2"))
    assert requests[0].params == {"s": 3}
    assert [s.ref.id for s in runs] == ["a", "b", "c"]
    requests, runs = step(
        Vi(organization_id=ORG).list_runs(limit=None, page_size=1),
        page(["a"], "t2"),
        page(["b"], "t2"),
    )
    assert len(requests) == 2 and [s.ref.id for s in runs] == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"limit": 0}, "limit"), ({"page_size": 1001}, "page_size"), ({"limit": True}, "limit")],
)
def test_list_runs_rejects_bad_bounds(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        next(Vi(organization_id=ORG).list_runs(**kwargs))


def test_list_runs_rejects_a_body_that_is_not_a_page() -> None:
    with pytest.raises(ProtocolError, match="page of runs"):
        step(Vi(organization_id=ORG).list_runs(), Canned(body=[1, 2]))


# -- errors -----------------------------------------------------------------------------------------
def test_errors_read_the_message_and_the_trace_id() -> None:
    with pytest.raises(RunNotFound) as info:
        step(
            Vi().status(REF),
            Canned(
                404,
                {"error": "NotFound", "message": f"Run {R} not found"},
                headers={"x-cloud-trace-context": "abc123/456;o=1"},
            ),
        )
    assert info.value.message == f"Run {R} not found"
    assert info.value.request_id == "abc123"
