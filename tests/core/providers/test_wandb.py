"""The wandb provider, sans-IO: canned GraphQL answers in, requests and values out.

Shapes follow docs/platforms/wandb.md (wandb 0.31.0).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from runbridge import ConfigError, LaunchSpec, ProtocolError, RunNotFound, RunRef, RunState
from runbridge.core.errors import AuthError, BadRequest, Conflict, PlatformUnavailable
from runbridge.core.providers.wandb import (
    LAUNCH_DEFAULT_PROJECT,
    QUEUE_ITEM_STATES,
    STATES,
    WandB,
    app_url_for,
    run_id_for_key,
)

from .stepper import Canned, step

E, P = "acme", "vision"
REF = RunRef("wandb", "abc123", {"entity": E, "project": P})
STORAGE_ID = "UnVuOnYxOmFiYzEyMzp2aXNpb246YWNtZQ=="
ITEM = "UnVuUXVldWVJdGVtOnYxOjQ="
QUEUED = RunRef(
    "wandb",
    ITEM,
    {
        "kind": "queued",
        "entity": E,
        "project": P,
        "queue": "gpu",
        "queue_project": "model-registry",
    },
)


def run(state: str, summary: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": STORAGE_ID,
        "name": "abc123",
        "displayName": "brisk-sun-7",
        "state": state,
        "createdAt": "2025-03-01T10:00:00",
        "heartbeatAt": "2025-03-01T10:05:00",
        "summaryMetrics": json.dumps(summary if summary is not None else {"val_loss": 0.1}),
        **extra,
    }


def answer(data: Any) -> Canned:
    return Canned(body={"data": data})


def with_run(value: Any) -> Canned:
    return answer({"project": {"run": value}})


def with_item(item: Any) -> Canned:
    return answer({"project": {"runQueue": {"runQueueItem": item}}})


def errors(*messages: str, status: int = 200) -> Canned:
    return Canned(status, {"errors": [{"message": m} for m in messages]})


# -- status and states ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("pending", RunState.PENDING),
        ("running", RunState.RUNNING),
        ("preempting", RunState.RUNNING),
        ("finished", RunState.SUCCEEDED),
        ("failed", RunState.FAILED),
        ("crashed", RunState.FAILED),
        ("killed", RunState.CANCELLED),
        ("preempted", RunState.FAILED),
        ("paused-by-a-new-server", RunState.UNKNOWN),
    ],
)
def test_status_maps_every_raw_state(raw: str, state: RunState) -> None:
    requests, status = step(WandB().status(REF), with_run(run(raw)))
    (request,) = requests
    assert (request.method, request.path, request.retryable) == ("POST", "/graphql", True)
    assert "project(name: $project, entityName: $entity)" in request.json["query"]
    assert request.json["variables"] == {"entity": E, "project": P, "name": "abc123"}
    assert (status.state, status.raw_state) == (state, raw)
    assert (status.ended_at is not None) == state.is_terminal
    assert status.outputs["summary"] == {"val_loss": 0.1}
    assert status.outputs["display_name"] == "brisk-sun-7"
    assert status.created_at is not None and status.created_at.tzinfo is not None
    assert status.ref == REF


def test_every_documented_state_is_in_the_table() -> None:
    documented = {"pending", "running", "finished", "failed", "crashed", "killed"}
    assert documented | {"preempting", "preempted"} == set(STATES)
    assert {s for s, v in STATES.items() if v.is_terminal} == {
        "finished",
        "failed",
        "crashed",
        "killed",
        "preempted",
    }
    assert not any(v.is_terminal for k, v in QUEUE_ITEM_STATES.items() if k != "FAILED")


def test_the_docs_table_matches_the_states() -> None:
    text = (Path(__file__).parents[3] / "docs/platforms/wandb.md").read_text()
    table = text.split("<!-- states-table")[1].split("<!-- /states-table -->")[0]
    rows = re.findall(r"^\| `([a-z]+)` \| [^|]+ \| ([A-Z_]+)", table, re.MULTILINE)
    assert dict(rows) == {raw: state.value for raw, state in STATES.items()}


def test_failed_states_carry_a_message() -> None:
    _, status = step(WandB().status(REF), with_run(run("crashed")))
    assert status.message is not None and "heartbeats" in status.message


def test_preempted_wait_keeps_waiting() -> None:
    _, status = step(WandB(preempted="wait").status(REF), with_run(run("preempted")))
    assert (status.state, status.raw_state) == (RunState.PENDING, "preempted")
    assert status.message is not None and "resumed" in status.message
    with pytest.raises(ConfigError, match=r"preempted must be 'failed'.*'wait'"):
        WandB(preempted="resume")


def test_summary_as_object_and_unreadable_summary() -> None:
    _, status = step(WandB().status(REF), with_run({**run("running"), "summaryMetrics": {"a": 1}}))
    assert status.outputs["summary"] == {"a": 1}
    provider = WandB(require="a > 0")
    _, broken = step(provider.status(REF), with_run({**run("finished"), "summaryMetrics": "{x"}))
    assert broken.outputs["summary"] == {}
    assert "not valid JSON" in broken.outputs["summary_error"]
    assert broken.state is RunState.FAILED  # a condition cannot hold on an unreadable summary


def test_nan_in_the_summary_fails_an_ordering_condition() -> None:
    summary = '{"val_loss": NaN}'
    provider = WandB(require="val_loss < 0.2")
    _, status = step(provider.status(REF), with_run({**run("finished"), "summaryMetrics": summary}))
    assert status.state is RunState.FAILED
    assert status.outputs["require"][0]["actual"] == "nan"


# -- require: summary conditions ---------------------------------------------------------------------
def test_require_passes_on_a_finished_run() -> None:
    provider = WandB(require=["val_loss < 0.2", "eval.acc >= 0.9"])
    summary = {"val_loss": 0.1, "eval": {"acc": 0.95}}
    _, status = step(provider.status(REF), with_run(run("finished", summary)))
    assert status.state is RunState.SUCCEEDED
    assert [r["passed"] for r in status.outputs["require"]] == [True, True]


def test_require_fails_a_finished_run_naming_condition_and_value() -> None:
    provider = WandB(require="val_loss < 0.2, accuracy >= 0.9")
    _, status = step(provider.status(REF), with_run(run("finished", {"val_loss": 0.35})))
    assert (status.state, status.raw_state) == (RunState.FAILED, "finished")
    assert status.message == (
        "summary condition not met: val_loss < 0.2 failed: val_loss is 0.35; "
        "accuracy >= 0.9 failed: accuracy not found in the run summary"
    )
    assert status.outputs["require"] == [
        {"condition": "val_loss < 0.2", "passed": False, "found": True, "actual": 0.35},
        {"condition": "accuracy >= 0.9", "passed": False, "found": False, "actual": None},
    ]
    assert status.ended_at is not None


@pytest.mark.parametrize("raw", ["running", "failed", "killed"])
def test_require_is_only_applied_to_finished_runs(raw: str) -> None:
    provider = WandB(require="val_loss < 0.01")
    _, status = step(provider.status(REF), with_run(run(raw)))
    assert status.state is STATES[raw]
    assert "require" not in status.outputs


def test_a_bad_require_is_a_config_error_naming_the_option() -> None:
    with pytest.raises(ConfigError, match=r"wandb: require: .*'val_loss = 0.2'.*'=='"):
        WandB(require="val_loss = 0.2")


# -- references ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["acme/vision/abc123", "https://wandb.ai/acme/vision/runs/abc123", "/acme/vision/abc123/"],
)
def test_refs_from_paths_and_urls(text: str) -> None:
    assert WandB().make_ref(text) == REF


def test_refs_take_defaults_and_reject_conflicts() -> None:
    assert WandB(entity=E, project=P).make_ref("abc123") == REF
    assert WandB().check_ref(RunRef("wandb", "acme/vision/abc123")) == REF
    with pytest.raises(ConfigError, match="needs entity, project"):
        WandB().make_ref("abc123")
    with pytest.raises(ConfigError, match="names entity 'acme' but the scope says 'other'"):
        WandB().make_ref("acme/vision/abc123", entity="other")
    with pytest.raises(ConfigError, match="entity/project/run_id"):
        WandB().make_ref("acme/abc123")
    with pytest.raises(ConfigError, match="needs the queue name"):
        WandB().make_ref(ITEM, kind="queued", entity=E, project=P)
    with pytest.raises(ConfigError, match="kind must be"):
        WandB().make_ref("abc123", kind="job", entity=E, project=P)
    queued = WandB().make_ref(ITEM, kind="queued", entity=E, project=P, queue="gpu")
    assert queued.scope["queue_project"] == LAUNCH_DEFAULT_PROJECT
    slashed = WandB().make_ref("UnVu/UXV+lJdGVt==", kind="queued", entity=E, project=P, queue="q")
    assert slashed.id == "UnVu/UXV+lJdGVt=="  # a base64 item id is not a path
    assert RunRef.parse(slashed.to_string()) == slashed


def test_basic_auth_with_the_api_user() -> None:
    header = WandB().auth_headers("s3cret-key")["Authorization"]
    assert header.startswith("Basic ")
    assert base64.b64decode(header[6:]) == b"api:s3cret-key"


def test_run_url() -> None:
    provider = WandB(app_url="https://wandb.ai/")
    _, status = step(provider.status(REF), with_run(run("running")))
    assert status.url == "https://wandb.ai/acme/vision/runs/abc123"
    _, plain = step(WandB().status(REF), with_run(run("running")))
    assert plain.url is None
    with pytest.raises(ConfigError, match="app_url"):
        WandB(app_url="wandb.ai")


@pytest.mark.parametrize(
    ("api", "app"),
    [
        ("https://api.wandb.ai", "https://forge.coreweave.com/wandb"),
        ("https://api.wandb.ai/", "https://forge.coreweave.com/wandb"),
        ("https://api.forge.coreweave.com", "https://forge.coreweave.com/wandb"),
        ("https://api.qa.wandb.ai", "https://qa.forge.coreweave.com/wandb"),
        ("https://api.wandb.test", "https://app.wandb.test"),
        ("https://api.wandb.eu", "https://wandb.eu"),
        ("https://api.example.com", "https://app.example.com"),
        ("https://wandb.corp.example", "https://wandb.corp.example"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_app_url_for(api: str, app: str) -> None:
    assert app_url_for(api) == app


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("canned", "error", "text"),
    [
        (errors("permission denied"), AuthError, "permission denied"),
        (errors("user is not logged in", status=401), AuthError, "user is not logged in"),
        (errors("project not found"), RunNotFound, "project not found"),
        (errors("internal server error, try again"), PlatformUnavailable, "internal"),
        (errors('Cannot query field "x" on type "Run".'), BadRequest, "Cannot query field"),
        (Canned(502, raw=b"<html>bad gateway</html>"), PlatformUnavailable, "bad gateway"),
        (Canned(200, {"error": {"message": "boom"}}), BadRequest, "boom"),
        (answer({"project": None}), RunNotFound, "no project acme/vision"),
        (with_run(None), RunNotFound, "no run 'abc123' in acme/vision"),
        (Canned(200, {"nodata": 1}), ProtocolError, "no data"),
        (with_run({"id": "x"}), ProtocolError, "no state"),
    ],
)
def test_errors(canned: Canned, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        step(WandB().status(REF), canned)


# -- launch -----------------------------------------------------------------------------------------------
LAUNCH = {"queue": "gpu", "entity": E, "project": P, "docker_image": "trainer:1.2"}


def pushed(item: str = ITEM) -> Canned:
    return answer({"pushToRunQueueByName": {"runQueueItemId": item, "runSpec": "{}"}})


def test_launch_pushes_the_spec_and_returns_the_queue_item() -> None:
    spec = LaunchSpec({**LAUNCH, "overrides": {"run_config": {"lr": 0.1}}}, key="dag.t.1")
    requests, ref = step(WandB().launch(spec), pushed())
    (request,) = requests
    assert request.retry is None and not request.retryable  # a POST, never resent blindly
    body = request.json
    assert body["operationName"] == "pushToRunQueueByName"
    assert "pushToRunQueueByName(input: {" in body["query"]
    assert "runQueueItemId runSpec" in body["query"]
    variables = body["variables"]
    assert {k: v for k, v in variables.items() if k != "runSpec"} == {
        "entityName": E,
        "projectName": "model-registry",
        "queueName": "gpu",
    }
    run_id = run_id_for_key("dag.t.1")
    assert json.loads(variables["runSpec"]) == {
        "entity": E,
        "project": P,
        "docker": {"docker_image": "trainer:1.2"},
        "overrides": {"run_config": {"lr": 0.1}},
        "resource": None,
        "git": {},
        "run_id": run_id,
    }
    assert ref == RunRef(
        "wandb",
        ITEM,
        {
            "kind": "queued",
            "entity": E,
            "project": P,
            "queue": "gpu",
            "queue_project": "model-registry",
            "run_id": run_id,
        },
    )


def test_launch_with_priority_template_variables_queue_entity_and_job() -> None:
    params = {
        "queue": "gpu",
        "queue_project": "launch",
        "queue_entity": "ops",
        "entity": E,
        "project": P,
        "job": "acme/vision/job-trainer:latest",
        "priority": 1,
        "template_variables": {"gpus": 2},
        "run_id": "mine-1",
    }
    requests, ref = step(WandB().launch(LaunchSpec(params)), pushed())
    body = requests[0].json
    assert "$priority: Int" in body["query"] and "priority: $priority" in body["query"]
    assert "templateVariableValues: $templateVariableValues" in body["query"]
    variables = body["variables"]
    assert (variables["entityName"], variables["projectName"]) == ("ops", "launch")
    assert variables["priority"] == 1
    assert json.loads(variables["templateVariableValues"]) == {"gpus": 2}
    launched = json.loads(variables["runSpec"])
    assert launched["job"] == "acme/vision/job-trainer:latest"
    assert launched["run_id"] == "mine-1" and launched["queue_entity"] == "ops"
    assert "priority" not in launched and "template_variables" not in launched
    assert ref.scope["queue_entity"] == "ops" and ref.scope["run_id"] == "mine-1"


def test_launch_falls_back_when_the_payload_has_no_run_spec() -> None:
    old = errors('Cannot query field "runSpec" on type "PushToRunQueueByNamePayload".')
    requests, ref = step(
        WandB().launch(LaunchSpec(LAUNCH)),
        old,
        answer({"pushToRunQueueByName": {"runQueueItemId": ITEM}}),
    )
    assert "runQueueItemId runSpec" in requests[0].json["query"]
    assert "runSpec }" not in requests[1].json["query"]
    assert "{ runQueueItemId }" in requests[1].json["query"]
    assert ref.id == ITEM and "run_id" not in ref.scope


def test_launch_refused_without_an_item() -> None:
    with pytest.raises(BadRequest, match="check that run queue 'gpu' exists"):
        step(WandB().launch(LaunchSpec(LAUNCH)), answer({"pushToRunQueueByName": None}))
    with pytest.raises(RunNotFound, match="run queue gpu not found"):
        step(WandB().launch(LaunchSpec(LAUNCH)), errors("run queue gpu not found"))


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"entity": E, "project": P, "docker_image": "i"}, "needs params\\['queue'\\]"),
        ({"queue": "q", "docker_image": "i"}, "needs params\\['entity'\\]"),
        ({"queue": "q", "entity": E, "project": P}, "exactly one of"),
        ({**LAUNCH, "job": "a/b/c:latest"}, "exactly one of"),
        ({**LAUNCH, "run_id": "a/b"}, "cannot contain"),
        ({**LAUNCH, "priority": -1}, "priority"),
        ({**LAUNCH, "template_variables": [1]}, "template_variables"),
        ({**LAUNCH, "overrides": {"x": object()}}, "not JSON"),
    ],
)
def test_launch_config_errors(params: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        step(WandB().launch(LaunchSpec(params)))


def test_launch_takes_defaults_from_options() -> None:
    provider = WandB(entity=E, project=P, queue="gpu", queue_project="q-proj")
    requests, ref = step(provider.launch(LaunchSpec({"docker_image": "i"})), pushed())
    variables = requests[0].json["variables"]
    assert (variables["entityName"], variables["projectName"], variables["queueName"]) == (
        E,
        "q-proj",
        "gpu",
    )
    assert ref.scope["queue_project"] == "q-proj"


def test_find_looks_the_derived_run_id_up() -> None:
    spec = LaunchSpec(LAUNCH, key="dag.t.1")
    provider = WandB()
    assert provider.supports_find and provider.can_find(spec)
    assert not provider.can_find(LaunchSpec(LAUNCH))
    requests, found = step(provider.find(spec), with_run(run("running")))
    assert requests[0].json["variables"]["name"] == run_id_for_key("dag.t.1")
    assert found == RunRef("wandb", run_id_for_key("dag.t.1"), {"entity": E, "project": P})
    requests, missing = step(provider.find(spec), with_run(None), with_items())
    assert missing is None and len(requests) == 2


def with_items(*nodes: Any) -> Canned:
    edges = [{"node": node} for node in nodes]
    return answer({"project": {"runQueue": {"runQueueItems": {"edges": edges}}}})


def queued_node(item: str, run_id: str, state: str = "PENDING", **spec: Any) -> dict[str, Any]:
    launched = {**LAUNCH, "run_id": run_id, **spec}
    return {"id": item, "state": state, "associatedRunId": None, "runSpec": json.dumps(launched)}


def test_find_looks_for_the_queue_item_carrying_the_key_while_no_run_exists() -> None:
    # A push whose answer was lost before an agent took the item: no run yet, but the item is
    # in the queue with the key's run id in its spec. find returns it, so nothing is pushed twice.
    spec = LaunchSpec(LAUNCH, key="dag.t.1")
    mine = run_id_for_key("dag.t.1")
    requests, found = step(
        WandB().find(spec),
        with_run(None),
        with_items(queued_node("other", "rb-someone-else"), queued_node(ITEM, mine)),
    )
    listing = requests[1].json
    assert listing["variables"] == {
        "projectName": "model-registry",
        "entityName": E,
        "runQueue": "gpu",
    }
    assert "runQueueItems(first: 100)" in listing["query"]
    assert "node { id state associatedRunId runSpec }" in listing["query"]
    assert found == RunRef(
        "wandb",
        ITEM,
        {
            "kind": "queued",
            "entity": E,
            "project": P,
            "queue": "gpu",
            "queue_project": "model-registry",
            "run_id": mine,
        },
    )
    # the ref is the one launch would have returned
    _, launched = step(WandB().launch(spec), pushed())
    assert found == launched


def test_find_prefers_an_item_the_agent_did_not_fail_and_reads_specs_as_objects() -> None:
    mine = run_id_for_key("k")
    failed = queued_node("failed-item", mine, state="FAILED")
    live = {**queued_node("live-item", mine), "runSpec": {**LAUNCH, "run_id": mine}}
    _, found = step(
        WandB().find(LaunchSpec(LAUNCH, key="k")), with_run(None), with_items(failed, live)
    )
    assert found is not None and found.id == "live-item"
    _, only_failed = step(
        WandB().find(LaunchSpec(LAUNCH, key="k")), with_run(None), with_items(failed)
    )
    assert only_failed is not None and only_failed.id == "failed-item"


@pytest.mark.parametrize(
    "listing",
    [
        answer({"project": None}),
        answer({"project": {"runQueue": None}}),
        with_items({"id": ITEM, "state": "PENDING", "associatedRunId": None, "runSpec": "{x"}),
        with_items({"id": None, "runSpec": json.dumps({"run_id": run_id_for_key("k")})}),
        errors('Cannot query field "runSpec" on type "RunQueueItem".'),
    ],
)
def test_find_without_an_item_of_the_key(listing: Canned) -> None:
    # (the last: a server whose queue items show no spec; nothing can be found by it)
    _, found = step(WandB().find(LaunchSpec(LAUNCH, key="k")), with_run(None), listing)
    assert found is None


def test_find_without_a_queue_reads_the_run_only() -> None:
    spec = LaunchSpec({"entity": E, "project": P}, key="k")
    requests, found = step(WandB().find(spec), with_run(None))
    assert found is None and len(requests) == 1


def test_run_ids_for_keys_are_stable_and_legal() -> None:
    first = run_id_for_key("dag.task.2024-05-01T00:00:00+00:00.0")
    assert first == run_id_for_key("dag.task.2024-05-01T00:00:00+00:00.0")
    assert first != run_id_for_key("dag.task.2024-05-01T00:00:00+00:00.1")
    assert not set(first) & set(":;,#?/'")


# -- queued launches ------------------------------------------------------------------------------------------
def test_a_queued_item_without_a_run_is_pending() -> None:
    requests, status = step(
        WandB().status(QUEUED), with_item({"id": ITEM, "state": "PENDING", "associatedRunId": None})
    )
    assert requests[0].json["variables"] == {
        "projectName": "model-registry",
        "entityName": E,
        "runQueue": "gpu",
        "itemId": ITEM,
    }
    assert "runQueueItem(id: $itemId) { id state associatedRunId }" in requests[0].json["query"]
    assert (status.state, status.raw_state, status.ref) == (RunState.PENDING, "PENDING", QUEUED)
    assert status.message == "queued in acme/model-registry/gpu; no run yet"
    assert status.url is None


@pytest.mark.parametrize(
    ("raw", "state"),
    [("FAILED", RunState.FAILED), ("LEASED", RunState.PENDING), ("NEW", "UNKNOWN")],
)
def test_queued_item_states(raw: str, state: RunState | str) -> None:
    _, status = step(
        WandB().status(QUEUED), with_item({"id": ITEM, "state": raw, "associatedRunId": None})
    )
    assert status.state is RunState(state)


def test_a_queued_item_is_followed_into_its_run() -> None:
    provider = WandB(app_url="https://wandb.ai")
    item = {"id": ITEM, "state": "CLAIMED", "associatedRunId": "abc123"}
    requests, status = step(provider.status(QUEUED), with_item(item), with_run(run("running")))
    assert requests[1].json["variables"] == {"entity": E, "project": P, "name": "abc123"}
    assert status.ref == REF
    assert (status.state, status.raw_state) == (RunState.RUNNING, "running")
    assert status.url == "https://wandb.ai/acme/vision/runs/abc123"
    # the provider keeps no memory: the next check reads the item and the run again
    requests, status = step(provider.status(QUEUED), with_item(item), with_run(run("finished")))
    assert len(requests) == 2 and status.state is RunState.SUCCEEDED and status.ref == REF


def test_a_keyed_queued_launch_reads_its_run_first() -> None:
    # The ref of a keyed launch carries the run id the agent will use: once the run exists,
    # one request per check, with nothing remembered between checks.
    keyed = RunRef("wandb", ITEM, {**QUEUED.scope, "run_id": "abc123"})
    requests, status = step(WandB().status(keyed), with_run(run("running")))
    assert len(requests) == 1 and requests[0].json["variables"]["name"] == "abc123"
    assert status.ref == REF and status.state is RunState.RUNNING
    # before it exists: the item (the run named by the item is not read twice)
    item = {"id": ITEM, "state": "CLAIMED", "associatedRunId": "abc123"}
    requests, status = step(WandB().status(keyed), with_run(None), with_item(item))
    assert len(requests) == 2 and (status.state, status.raw_state) == (RunState.PENDING, "CLAIMED")
    requests, status = step(WandB().status(keyed), with_run(None), with_item(None))
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "deleted")


def test_the_provider_holds_no_state_between_operations() -> None:
    provider = WandB()
    before = dict(vars(provider))
    item = {"id": ITEM, "state": "CLAIMED", "associatedRunId": "abc123"}
    step(provider.status(QUEUED), with_item(item), with_run(run("running")))
    step(
        provider.cancel(QUEUED),
        with_item({"id": ITEM, "state": "PENDING", "associatedRunId": None}),
        answer({"project": {"runQueue": {"id": "q"}}}),
        answer({"deleteFromRunQueue": {"success": True}}),
    )
    assert vars(provider) == before


def test_a_claimed_item_whose_run_has_not_started() -> None:
    provider = WandB()
    item = {"id": ITEM, "state": "CLAIMED", "associatedRunId": "abc123"}
    _, status = step(provider.status(QUEUED), with_item(item), with_run(None))
    assert (status.state, status.raw_state, status.ref) == (RunState.PENDING, "CLAIMED", QUEUED)
    assert "waiting for run 'abc123'" in (status.message or "")
    # not remembered yet: the item is read again
    requests, _ = step(provider.status(QUEUED), with_item(item), with_run(run("running")))
    assert len(requests) == 2


def test_a_missing_queue_item_or_queue() -> None:
    # An item gone before a run started was deleted from its queue (by whoever cancelled it):
    # every process reports it the same way, CANCELLED, since no provider remembers anything.
    _, status = step(WandB().status(QUEUED), with_item(None))
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "deleted")
    assert "no longer in run queue 'gpu'" in (status.message or "")
    with pytest.raises(RunNotFound, match="no run queue 'gpu' in acme/model-registry"):
        step(WandB().status(QUEUED), answer({"project": {"runQueue": None}}))


# -- cancel -------------------------------------------------------------------------------------------------------
def test_cancel_stops_a_running_run_by_its_storage_id() -> None:
    requests, result = step(
        WandB().cancel(REF), with_run(run("running")), answer({"stopRun": {"success": True}})
    )
    assert result is None
    stop = requests[1]
    assert stop.json["operationName"] == "StopRun"
    assert "stopRun(input: {id: $id}) { success }" in stop.json["query"]
    assert stop.json["variables"] == {"id": STORAGE_ID}
    assert stop.retryable


@pytest.mark.parametrize("raw", ["finished", "failed", "crashed", "killed"])
def test_cancel_leaves_an_ended_run_alone(raw: str) -> None:
    requests, _ = step(WandB().cancel(REF), with_run(run(raw)))
    assert len(requests) == 1


def test_cancel_refused() -> None:
    with pytest.raises(Conflict, match="did not stop run acme/vision/abc123"):
        step(WandB().cancel(REF), with_run(run("running")), answer({"stopRun": {"success": False}}))
    with pytest.raises(RunNotFound):
        step(WandB().cancel(REF), with_run(None))


def test_cancel_deletes_an_unclaimed_queue_item() -> None:
    provider = WandB()
    queue_id = "UnVuUXVldWU6djE6Mg=="
    requests, _ = step(
        provider.cancel(QUEUED),
        with_item({"id": ITEM, "state": "PENDING", "associatedRunId": None}),
        answer({"project": {"runQueue": {"id": queue_id}}}),
        answer({"deleteFromRunQueue": {"success": True}}),
    )
    assert requests[1].json["variables"] == {
        "projectName": "model-registry",
        "entityName": E,
        "runQueue": "gpu",
    }
    assert requests[2].json["variables"] == {"queueID": queue_id, "runQueueItemId": ITEM}
    # afterwards, in this process or any other: CANCELLED, and a second cancel does nothing
    _, status = step(WandB().status(QUEUED), with_item(None))
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "deleted")
    requests, _ = step(WandB().cancel(QUEUED), with_item(None))
    assert len(requests) == 1


def test_cancel_of_a_queued_item_stops_its_run() -> None:
    item = {"id": ITEM, "state": "CLAIMED", "associatedRunId": "abc123"}
    requests, _ = step(
        WandB().cancel(QUEUED),
        with_item(item),
        with_run(run("running")),
        answer({"stopRun": {"success": True}}),
    )
    assert requests[2].json["variables"] == {"id": STORAGE_ID}
    with pytest.raises(Conflict, match="has not started yet"):
        step(WandB().cancel(QUEUED), with_item(item), with_run(None))
    failed = {"id": ITEM, "state": "FAILED", "associatedRunId": None}
    requests, _ = step(WandB().cancel(QUEUED), with_item(failed))
    assert len(requests) == 1
    with pytest.raises(Conflict, match="an agent may have taken it"):
        step(
            WandB().cancel(QUEUED),
            with_item({"id": ITEM, "state": "PENDING", "associatedRunId": None}),
            answer({"project": {"runQueue": {"id": "q"}}}),
            answer({"deleteFromRunQueue": {"success": False}}),
        )


def test_cancel_of_a_keyed_queued_launch_stops_its_run_directly() -> None:
    keyed = RunRef("wandb", ITEM, {**QUEUED.scope, "run_id": "abc123"})
    requests, _ = step(
        WandB().cancel(keyed), with_run(run("running")), answer({"stopRun": {"success": True}})
    )
    assert [r.json["operationName"] for r in requests] == ["RunbridgeRun", "StopRun"]
    item = {"id": ITEM, "state": "CLAIMED", "associatedRunId": "abc123"}
    with pytest.raises(Conflict, match="has not started yet"):
        step(WandB().cancel(keyed), with_run(None), with_item(item))


@pytest.mark.parametrize("state", [{"raw": "running"}, ["killed"], 7, None])
def test_cancel_of_a_run_whose_state_is_not_a_string_still_stops_it(state: Any) -> None:
    requests, _ = step(
        WandB().cancel(REF),
        with_run({**run("running"), "state": state}),
        answer({"stopRun": {"success": True}}),
    )
    assert requests[1].json["variables"] == {"id": STORAGE_ID}


@pytest.mark.parametrize("item_id", [{"id": "x"}, ["x"], True, 1.5])
def test_a_push_answer_with_an_item_id_of_the_wrong_type_is_a_protocol_error(item_id: Any) -> None:
    with pytest.raises(ProtocolError, match="runQueueItemId that is not an id"):
        step(
            WandB().launch(LaunchSpec(LAUNCH)),
            answer({"pushToRunQueueByName": {"runQueueItemId": item_id}}),
        )
    with pytest.raises(ProtocolError, match="no pushToRunQueueByName object"):
        step(WandB().launch(LaunchSpec(LAUNCH)), answer({"pushToRunQueueByName": [item_id]}))
