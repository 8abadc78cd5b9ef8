"""Each provider's batch form (``status_many``), sans-IO: the request it makes, how it splits
the answer (a run missing or unreadable is left for a single check), its limits and keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runbridge import ConfigError, ProtocolError, RunRef, RunState
from runbridge.core.errors import BadRequest, NotSupported, RunbridgeError
from runbridge.core.providers.flyte import MAX_LIST, Flyte
from runbridge.core.providers.langgraph import LangGraph
from runbridge.core.providers.lume import Lume
from runbridge.core.providers.rest import RestProvider
from runbridge.core.providers.vi import MAX_PAGE_SIZE, Vi
from runbridge.core.providers.wandb import MAX_BATCH, WandB
from runbridge.testing.rest import REST_BATCH, REST_CONFIG
from tests.core.providers.stepper import Canned, step
from tests.core.providers.test_vi import cond, run


def rest(**batch: Any) -> RestProvider:
    return RestProvider(**{**REST_CONFIG, "batch": {**REST_BATCH, **batch}})


# -- rest ----------------------------------------------------------------------------------------
def test_rest_asks_for_every_id_in_one_post_and_reads_each_run_as_its_status() -> None:
    a, b, c = (RunRef("rest", i) for i in ("r-1", "r-2", "r-3"))
    answer = {
        "runs": [
            {"id": "r-2", "status": "succeeded", "result": {"rows": 1}},
            {"id": "r-1", "status": "running"},
            {"id": "r-9", "status": "running"},  # not asked about: ignored
            {"id": "r-3"},  # no state: unreadable, that run alone
        ]
    }
    requests, out = step(rest().status_many([a, b, c]), Canned(body=answer))
    (request,) = requests
    assert (request.method, request.path, request.json) == (
        "POST",
        "/api/v1/runs:batchGet",
        {"ids": ["r-1", "r-2", "r-3"]},
    )
    assert request.retryable  # a read: safe to send again
    assert out[a].state is RunState.RUNNING
    assert out[b].state is RunState.SUCCEEDED and out[b].outputs == {"rows": 1}
    assert isinstance(out[c], ProtocolError)
    assert set(out) == {a, b, c}


def test_rest_get_batches_send_the_ids_comma_separated_and_a_missing_run_is_left_out() -> None:
    a, b = RunRef("rest", "r-1"), RunRef("rest", "r-2")
    provider = rest(method="GET", path="/api/v1/runs", ids="id")
    requests, out = step(
        provider.status_many([a, b]), Canned(body={"runs": [{"id": "r-1", "status": "queued"}]})
    )
    assert requests[0].params == {"id": "r-1,r-2"}
    assert list(out) == [a]


def test_rest_batch_failures_are_raised_for_the_hub_to_decide() -> None:
    a = RunRef("rest", "r-1")
    with pytest.raises(BadRequest):
        step(rest().status_many([a]), Canned(400, {"detail": "at most 50 ids"}))
    with pytest.raises(ProtocolError, match="no list of runs"):
        step(rest().status_many([a]), Canned(body={"items": []}))


def test_rest_batch_scope_follows_status_path() -> None:
    config = {
        **REST_CONFIG,
        "status": {**REST_CONFIG["status"], "path": "/jobs/{job}/runs/{run_id}"},
        "launch": {**REST_CONFIG["launch"], "scope": ["job"]},
    }
    provider = RestProvider(**config, batch={**REST_BATCH, "path": "/jobs/{job}/runs:batchGet"})
    a, b = RunRef("rest", "r-1", {"job": "etl"}), RunRef("rest", "r-2", {"job": "ml"})
    assert provider.batch_key(a) == ("etl",) and provider.batch_key(a) != provider.batch_key(b)
    requests, _ = step(provider.status_many([a]), Canned(body={"runs": []}))
    assert requests[0].path == "/jobs/etl/runs:batchGet"
    with pytest.raises(ConfigError, match=r"batch\.path must use job"):
        RestProvider(**config, batch=REST_BATCH)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({"max": 0}, "batch.max"),
        ({"max": True}, "batch.max"),
        ({"max": None}, "batch.max"),
        ({"path": "/runs/{run_id}"}, "run_id"),
        ({"path": "/runs/{job}"}, "uses job"),
        ({"method": "DELETE"}, "GET or POST"),
        ({"ids": None}, "batch.ids"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_bad_rest_batch_config_is_a_clear_error_at_once(batch: dict[str, Any], match: str) -> None:
    merged = {k: v for k, v in {**REST_BATCH, **batch}.items() if v is not None or k == "max"}
    with pytest.raises(ConfigError, match=match):
        RestProvider(**REST_CONFIG, batch=merged)


def test_without_a_batch_option_rest_has_no_batch_form() -> None:
    provider = RestProvider(**REST_CONFIG)
    assert provider.max_batch == 1 and provider.batch_key(RunRef("rest", "r")) is None
    with pytest.raises(NotSupported):
        step(provider.status_many([RunRef("rest", "r")]))


# -- W&B -------------------------------------------------------------------------------------
def wandb_ref(name: str, project: str = "p") -> RunRef:
    return RunRef("wandb", name, {"entity": "e", "project": project})


def test_wandb_asks_for_each_run_under_its_own_alias() -> None:
    refs = [wandb_ref("a"), wandb_ref("b", project="q"), wandb_ref("c")]
    answer = {
        "data": {
            "r0": {"run": {"name": "a", "state": "running"}},
            "r1": {"run": {"name": "b", "state": "finished", "summaryMetrics": "{}"}},
            "r2": {"run": None},  # not found: checked alone
        }
    }
    requests, out = step(WandB().status_many(refs), Canned(body=answer))
    body = requests[0].json
    assert body["operationName"] == "RunbridgeRuns"
    assert body["query"].count("project(name: $p") == 3
    assert body["variables"] == {
        "e0": "e", "p0": "p", "n0": "a",
        "e1": "e", "p1": "q", "n1": "b",
        "e2": "e", "p2": "p", "n2": "c",
    }  # fmt: skip
    assert out[refs[0]].state is RunState.RUNNING
    assert out[refs[1]].state is RunState.SUCCEEDED
    assert refs[2] not in out


def test_wandb_a_batch_with_only_errors_is_raised_and_queued_items_are_never_batched() -> None:
    provider = WandB()
    with pytest.raises(RunbridgeError, match="too complex"):
        step(
            provider.status_many([wandb_ref("a")]),
            Canned(400, {"errors": [{"message": "query too complex"}]}),
        )
    with pytest.raises(RunbridgeError):
        step(
            provider.status_many([wandb_ref("a")]),
            Canned(body={"errors": [{"message": "internal error"}]}),
        )
    queued = RunRef(
        "wandb", "item-1", {"entity": "e", "project": "p", "kind": "queued", "queue": "q"}
    )
    assert provider.batch_key(queued) is None and provider.batch_key(wandb_ref("a")) == ()
    assert provider.max_batch == MAX_BATCH


# -- Vi ----------------------------------------------------------------------------------------
def test_vi_reads_a_page_of_the_run_list_sized_to_the_batch() -> None:
    refs = [RunRef("vi", f"r{i}", {"organization_id": "org-123"}) for i in range(3)]
    page = {
        "items": [
            run(cond("Running"), run_id="r0"),
            run(cond("Succeeded"), run_id="r2"),
            run(cond("Running"), run_id="other"),
        ]
    }
    requests, out = step(Vi().status_many(refs), Canned(body=page))
    assert requests[0].path == "/workspaces/org-123/runs"
    assert requests[0].params == {"s": 100}  # at least a page of 100
    assert out[refs[0]].state is RunState.RUNNING
    assert out[refs[2]].state is RunState.SUCCEEDED
    assert refs[1] not in out  # not on the page: checked alone
    many = [RunRef("vi", f"r{i}", {"organization_id": "o"}) for i in range(400)]
    requests, _ = step(Vi().status_many(many), Canned(body={"items": []}))
    assert requests[0].params == {"s": MAX_PAGE_SIZE}
    assert Vi().batch_key(refs[0]) == "org-123"


# -- Flyte -------------------------------------------------------------------------------------
def flyte_run(name: str, phase: str) -> dict[str, Any]:
    run_id = {"project": "flytesnacks", "domain": "development", "name": name}
    return {"action": {"id": {"run": run_id, "name": "a0"}, "status": {"phase": phase}}}


def test_flyte_lists_the_project_filtered_to_the_names_and_leaves_ended_runs_out() -> None:
    refs = [RunRef("flyte", n, {"project": "flytesnacks", "domain": "development"}) for n in "abc"]
    answer = {
        "runs": [
            flyte_run("a", "ACTION_PHASE_RUNNING"),
            flyte_run("b", "ACTION_PHASE_SUCCEEDED"),  # ended: read alone, with its details
        ]
    }
    requests, out = step(Flyte().status_many(refs), Canned(body=answer))
    request = requests[0]
    assert request.path == "/flyteidl2.workflow.RunService/ListRuns"
    assert json.loads(json.dumps(request.json)) == {
        "request": {
            "limit": 3,
            "filters": [{"function": "VALUE_IN", "field": "name", "values": ["a", "b", "c"]}],
        },
        "projectId": {"domain": "development", "name": "flytesnacks"},
    }
    assert list(out) == [refs[0]] and out[refs[0]].state is RunState.RUNNING
    provider = Flyte(org="acme")
    assert provider.batch_key(refs[0]) == ("acme", "flytesnacks", "development")
    assert provider.max_batch == MAX_LIST


# -- no batch form -----------------------------------------------------------------------------
def test_langgraph_and_lume_have_no_batch_form() -> None:
    for provider in (LangGraph(), Lume()):
        assert provider.max_batch == 1
