"""Every provider's parsing of outside input is total.

Each operation that reads a platform answer (launch, status, join, find, list_runs, cancel,
error bodies, Lume webhook deliveries) is stepped with its happy-path answers, then again with
one answer replaced by: any JSON value, any bytes, under a 2xx or an error status (with odd
headers); or the right answer with one field of the wrong type, or missing. Whatever comes
back, the operation returns a value of the right type or raises a ``RunbridgeError`` subclass:
never ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError...

A malformed 2xx answer to a *launch* is a ``ProtocolError`` (or a ref, where the provider can
still tell which run it made), whose message quotes the answer.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Callable, Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runbridge.core.errors import PlatformError, ProtocolError, RunbridgeError
from runbridge.core.http import Request, Response
from runbridge.core.models import LaunchSpec, RunRef, RunStatus
from runbridge.core.providers.flyte import Flyte, envelope, run_name_for_key
from runbridge.core.providers.langgraph import LangGraph, thread_for_key
from runbridge.core.providers.lume import Lume
from runbridge.core.providers.rest import RestProvider
from runbridge.core.providers.vi import Vi, run_for_key
from runbridge.core.providers.wandb import WandB, run_id_for_key
from runbridge.core.webhooks import WebhookError, parse_delivery, sign
from tests.core.helpers import FakeClock, FlowDriver

EXAMPLES = int(os.environ.get("RUNBRIDGE_FUZZ_EXAMPLES", "100"))
"""Examples per test; raise it for a longer hunt (``RUNBRIDGE_FUZZ_EXAMPLES=5000``)."""
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- strategies -------------------------------------------------------------------------------
FIELDS = [
    # names the providers look for, so that arbitrary objects often hit a parser's branches
    "status", "run_id", "thread_id", "metadata", "values", "error", "interrupts", "message",
    "details", "action", "id", "run", "name", "attempts", "attempt", "outputs", "literals",
    "errorInfo", "abortInfo", "phase", "code", "data", "project", "runQueue", "runQueueItem",
    "runQueueItems", "edges", "node", "runSpec", "state", "associatedRunId", "summaryMetrics",
    "stopRun", "success", "pushToRunQueueByName", "runQueueItemId", "errors", "items",
    "nextPage", "runId", "workspaceId", "spec", "conditions", "condition", "lastTransitionTime",
    "killedAt", "lastUpdated", "detail", "loc", "msg", "results", "input_rows", "rejected_rows",
    "collection", "map", "scalar", "primitive", "integer", "floatValue", "union", "value",
    "offloadedInputData", "uri", "__error__", "createdAt", "heartbeatAt", "created_at",
]  # fmt: skip
TEXT = st.text(max_size=10) | st.sampled_from(["", "PENDING", "success", "finished", "a0", "%"])
KEYS = st.sampled_from(FIELDS) | st.text(max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**400, -(10**400), 2**63])
    | st.floats()
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=16,
)
STATUSES = st.sampled_from([200, 201, 202, 204, 400, 401, 403, 404, 408, 409, 422, 429, 500, 503])
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "retry-after": st.sampled_from(["5", "-1", "1e400", "nan", "Wed, 21 Oct 2015 07:28:00 GMT"])
        | TEXT,
        "date": st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo 0000 99:99:99"])
        | TEXT,
        "x-request-id": TEXT,
        "x-cloud-trace-context": TEXT,
        "connect-content-encoding": st.sampled_from(["gzip", "br", ""]),
    },
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def frames(draw: Any) -> bytes:
    """A Connect streaming body: envelopes of JSON, of bytes, gzipped or not, cut or not."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        payload = draw(st.one_of(JSON.map(_json_bytes), st.binary(max_size=20)))
        flags = draw(st.sampled_from([0, 1, 2, 3, 0x80]))
        if flags & 1 and draw(st.booleans()):
            payload = gzip.compress(payload)
        out += envelope(payload, flags)
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["json", "json", "bytes", "empty", "stream"]))
    if kind == "json":
        return _json_bytes(draw(JSON))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "stream":
        return frames(draw)
    return b""


# -- canned happy paths -----------------------------------------------------------------------
def ok(body: Any = None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = b"" if body is None else _json_bytes(body)
    return Response(status, {"content-type": "application/json", **(headers or {})}, content)


def raw(content: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(200, headers or {}, content)


# LangGraph
T, R = "0b7c9a6e-8a55-4f53-9d9e-1f0f3e2a1b11", "1f0c2d3e-4a5b-7c6d-8e9f-a0b1c2d3e4f5"
LG_REF = RunRef("langgraph", R, {"thread_id": T})
KEY = "dag.task.1"
TK = thread_for_key(KEY)


def lg_run(status: str = "success", thread: str = T, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": R,
        "thread_id": thread,
        "assistant_id": "agent",
        "created_at": "2026-11-25T09:26:45.512475+00:00",
        "updated_at": "2026-11-25T09:26:47+00:00",
        "status": status,
        "metadata": {"runbridge_key": KEY},
        **extra,
    }


LG_THREAD = {"thread_id": T, "status": "idle", "values": {"x": 1}, "interrupts": {}, "error": None}
LG_ERR_THREAD = {**LG_THREAD, "error": {"error": "ValueError", "message": "boom"}}

# Flyte
FRUN = {"project": "p", "domain": "d", "name": run_name_for_key(KEY)}
F_REF = RunRef("flyte", FRUN["name"], {"project": "p", "domain": "d"})


def f_action(phase: str = "ACTION_PHASE_SUCCEEDED") -> dict[str, Any]:
    return {
        "id": {"run": FRUN, "name": "a0"},
        "status": {"phase": phase, "startTime": "2026-11-25T09:26:45.123456789Z",
                   "endTime": "2026-11-25T09:27:00Z"},
        "attempts": [{"attempt": 1, "outputs": {"outputUri": "s3://b/o"},
                      "errorInfo": {"message": "m", "kind": "KIND_USER", "code": "c"}}],
        "errorInfo": {"message": "m", "kind": "KIND_USER", "code": "c"},
        "abortInfo": {"reason": "stop"},
    }  # fmt: skip


F_DETAILS = {"details": {"action": f_action()}}
F_OUTPUTS = {
    "outputs": {
        "literals": [
            {"name": "o0", "value": {"scalar": {"primitive": {"integer": "42"}}}},
            {"name": "o1", "value": {"collection": {"literals": [
                {"scalar": {"primitive": {"floatValue": "1.5"}}},
                {"map": {"literals": {"k": {"scalar": {"primitive": {"stringValue": "v"}}}}}},
                {"scalar": {"union": {"value": {"scalar": {"noneType": {}}}}}},
            ]}}},
        ]
    },
    "outputsUri": "s3://b/o.pb",
}  # fmt: skip
F_CREATED = {"run": {"action": {"id": {"run": FRUN}}}}
F_STREAM = {"connect-content-encoding": ""}


def f_stream(*messages: Any, end: Any = None) -> Response:
    content = b"".join(envelope(_json_bytes(m)) for m in messages)
    if end is not None:
        content += envelope(_json_bytes(end), 0x02)
    return raw(content, {"content-type": "application/connect+json"})


# W&B
E, P, ITEM = "acme", "vision", "UnVuUXVldWVJdGVtOnYxOjQ="
W_REF = RunRef("wandb", "abc123", {"entity": E, "project": P})
W_QUEUED = RunRef(
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
W_LAUNCH = {"queue": "gpu", "entity": E, "project": P, "docker_image": "trainer:1.2"}


def w_run(state: str = "finished") -> dict[str, Any]:
    return {
        "id": "UnVuOnYxOmFiYzEyMw==",
        "name": "abc123",
        "displayName": "brisk-sun-7",
        "state": state,
        "createdAt": "2025-03-01T10:00:00",
        "heartbeatAt": "2025-03-01T10:05:00",
        "summaryMetrics": json.dumps({"val_loss": 0.1, "eval": {"acc": [0.9, 0.95]}}),
    }


def gql(data: Any) -> Response:
    return ok({"data": data})


def w_with_run(run: Any) -> Response:
    return gql({"project": {"run": run}})


def w_with_item(item: Any) -> Response:
    return gql({"project": {"runQueue": {"runQueueItem": item}}})


def w_items(*nodes: Any) -> Response:
    edges = [{"node": node} for node in nodes]
    return gql({"project": {"runQueue": {"runQueueItems": {"edges": edges}}}})


W_PENDING = {"id": ITEM, "state": "PENDING", "associatedRunId": None}
W_CLAIMED = {"id": ITEM, "state": "CLAIMED", "associatedRunId": "abc123"}
W_KEYED_ITEM = {
    **W_PENDING,
    "runSpec": json.dumps({**W_LAUNCH, "run_id": run_id_for_key(KEY)}),
}

# Vi
ORG, VR = "org-123", run_for_key(KEY)
V_REF = RunRef("vi", VR, {"organization_id": ORG})
FLOW = {"name": "f", "schema": "v1", "tolerations": {}, "settings": {}, "blocks": []}


def v_run(condition: str = "Succeeded", run_id: str = VR) -> dict[str, Any]:
    return {
        "kind": "Run",
        "workspaceId": ORG,
        "runId": run_id,
        "spec": {"flow": FLOW, "killedAt": None, "trainingProject": "tp"},
        "status": {
            "log": "https://logs/x",
            "conditions": [
                {"condition": "Running", "status": "Reached", "lastTransitionTime": 1_735_689_600_000},
                {"condition": condition, "status": "Reached", "lastTransitionTime": 1_735_689_700_000,
                 "reason": "Done", "message": "ok"},
            ],
        },
        "metadata": {"timeCreated": 1_735_689_600_000, "lastUpdated": 1_735_689_700_000,
                     "attributes": {"runbridge_key": KEY}},
    }  # fmt: skip


V_404 = ok({"error": "NotFound", "message": "Run not found"}, 404)

# Lume
RID = "run_01HYE5ZJ7Q8ZK1N5C4W2T9B3XA"
L_REF = RunRef("lume", RID)
L_METADATA = {
    "run": {"run_id": RID, "status": "PARTIAL_FAILED"},
    "pipeline": {"created_at": "2024-07-30T10:00:00Z", "completed_at": 1722333750,
                 "duration_seconds": 150.0, "stages": {"transform_seconds": 110.0}},
    "results": {"input_rows": 1000, "rejected_rows": 40,
                "target_locations": {"rejects": "s3://out/rejects.csv"}},
    "validation": {"tests_executed": 50, "error_rate": 0.06,
                   "top_errors": [{"error_code": "INVALID_DATE", "field": "due", "count": 25}]},
    "errors": [{"stage": "transform", "error_code": "E1", "message": "bad"}],
}  # fmt: skip
L_RUN = {"id": RID, "status": "PARTIAL_FAILED", "created_at": "2024-07-30T10:00:00Z",
         "updated_at": "2024-07-30T10:02:30Z", "flow_version": "f:v3", "metadata": L_METADATA}  # fmt: skip

# REST
REST = RestProvider(
    status={"path": "/jobs/{job}/runs/{run_id}", "state": "run.status", "url": "run.url",
            "message": "run.error.message", "outputs": "run.result", "created_at": "run.created",
            "ended_at": "run.ended"},
    states={"queued": "PENDING", "running": "RUNNING", "done": "SUCCEEDED", "failed": "FAILED"},
    launch={"path": "/jobs/{job}/runs", "id": "run.id", "scope": ["job"],
            "idempotency_header": "Idempotency-Key"},
    cancel={"path": "/jobs/{job}/runs/{run_id}/cancel"},
)  # fmt: skip
REST_REF = RunRef("rest", "r1", {"job": "etl"})
REST_RUN = {"run": {"id": "r1", "status": "done", "url": "https://x/r1", "error": {"message": "m"},
                    "result": {"rows": 3}, "created": "2024-01-01T00:00:00Z", "ended": 1704067300}}  # fmt: skip


# -- operations ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Op:
    """One provider operation: how to start it, its happy-path answers, what it may return,
    and which of its requests creates the run (for launches)."""

    name: str
    start: Callable[[], Generator[Request, Response, Any]]
    script: list[Response]
    returns: tuple[type, ...]
    creates: int | None = None
    """Index of the request whose answer reports the new run (launch operations)."""

    def __repr__(self) -> str:
        return self.name


def _lg(**options: Any) -> LangGraph:
    provider = LangGraph(assistant_id="agent", **options)
    provider.new_id = lambda: T
    return provider


def _vi() -> Vi:
    provider = Vi(organization_id=ORG)
    provider.new_id = lambda: VR
    return provider


def _flyte(**options: Any) -> Flyte:
    return Flyte(
        project="p", domain="d", task="t", version="v1", console_url="https://c", **options
    )


REF_ = (RunRef,)
STATUS_ = (RunStatus,)
FOUND_ = (RunRef, type(None))
NONE_ = (type(None),)

OPS: list[Op] = [
    # LangGraph
    Op("langgraph.launch.keyed", lambda: _lg().launch(LaunchSpec({"input": {}}, key=KEY)),
       [ok({"thread_id": TK}), ok(lg_run("pending", TK))], REF_, creates=1),
    Op("langgraph.launch.unkeyed", lambda: _lg().launch(LaunchSpec({"input": {}})),
       [ok({"thread_id": T}), ok(lg_run("pending"))], REF_, creates=1),
    Op("langgraph.launch.on_thread", lambda: _lg().launch(LaunchSpec({"thread_id": T})),
       [ok(lg_run("pending"))], REF_, creates=0),
    Op("langgraph.launch.stateless", lambda: _lg().launch(LaunchSpec({"stateless": True})),
       [ok(lg_run("pending"))], REF_, creates=0),
    Op("langgraph.status.success", lambda: _lg().status(LG_REF),
       [ok(lg_run("success")), ok({**LG_THREAD, "status": "interrupted",
                                   "interrupts": {"t": [{"value": 1}]}})], STATUS_),
    Op("langgraph.status.error", lambda: _lg(run_url="https://s/{thread_id}/{run_id}").status(LG_REF),
       [ok(lg_run("error")), ok(LG_ERR_THREAD)], STATUS_),
    Op("langgraph.join", lambda: _lg().join(LG_REF, 30.0),  # type: ignore[arg-type,return-value]
       [ok({"x": 1}), ok(lg_run("error")), ok(LG_ERR_THREAD)], STATUS_),
    Op("langgraph.find", lambda: _lg().find(LaunchSpec({}, key=KEY)),
       [ok([lg_run("running", TK), lg_run("success", TK, created_at="2026-01-01")])], FOUND_),
    Op("langgraph.cancel", lambda: _lg().cancel(LG_REF), [ok({}, 202)], NONE_),
    Op("langgraph.cancel.ended", lambda: _lg().cancel(LG_REF),
       [ok({"detail": "No matching runs"}, 404), ok(lg_run("success"))], NONE_),
    # REST
    Op("rest.launch", lambda: REST.launch(LaunchSpec({"job": "etl", "x": 1}, key=KEY)),
       [ok({"run": {"id": "r1"}})], REF_, creates=0),
    Op("rest.status", lambda: REST.status(REST_REF), [ok(REST_RUN)], STATUS_),
    Op("rest.cancel", lambda: REST.cancel(REST_REF), [ok({})], NONE_),
    # Flyte
    Op("flyte.launch", lambda: _flyte().launch(LaunchSpec({"inputs": {"x": 1}}, key=KEY)),
       [ok(F_CREATED)], REF_, creates=0),
    Op("flyte.launch.server_named", lambda: _flyte().launch(LaunchSpec({"inputs": {"x": 1}})),
       [ok(F_CREATED)], REF_, creates=0),
    Op("flyte.launch.upload", lambda: _flyte(upload_inputs=True).launch(LaunchSpec({}, key=KEY)),
       [ok({"offloadedInputData": {"uri": "s3://i", "inputsHash": "h"}}), ok(F_CREATED)],
       REF_, creates=1),
    Op("flyte.find", lambda: _flyte().find(LaunchSpec({}, key=KEY)), [ok(F_DETAILS)], FOUND_),
    Op("flyte.status", lambda: _flyte().status(F_REF), [ok(F_DETAILS), ok(F_OUTPUTS)], STATUS_),
    Op("flyte.status.failed", lambda: _flyte().status(F_REF),
       [ok({"details": {"action": f_action("ACTION_PHASE_FAILED")}})], STATUS_),
    Op("flyte.status.aborted", lambda: _flyte().status(F_REF),
       [ok({"details": {"action": f_action("ACTION_PHASE_ABORTED")}})], STATUS_),
    Op("flyte.join", lambda: _flyte().join(F_REF, 30.0),  # type: ignore[arg-type,return-value]
       [f_stream({"details": f_action("ACTION_PHASE_RUNNING")}, {"details": f_action()}, end={}),
        ok(F_OUTPUTS)], STATUS_),
    Op("flyte.join.not_found", lambda: _flyte().join(F_REF, 30.0),  # type: ignore[arg-type,return-value]
       [f_stream(end={"error": {"code": "not_found", "message": "no action"}}),
        ok({"details": {"action": {**f_action("ACTION_PHASE_RUNNING"),
                                   "id": {"run": FRUN, "name": "root"}}}}),
        f_stream({"details": f_action("ACTION_PHASE_FAILED")}, end={})], STATUS_),
    Op("flyte.cancel", lambda: _flyte().cancel(F_REF), [ok({})], NONE_),
    # W&B
    Op("wandb.launch", lambda: WandB().launch(LaunchSpec(W_LAUNCH, key=KEY)),
       [gql({"pushToRunQueueByName": {"runQueueItemId": ITEM, "runSpec": "{}"}})], REF_, creates=0),
    Op("wandb.find", lambda: WandB().find(LaunchSpec(W_LAUNCH, key=KEY)),
       [w_with_run(None), w_items(W_PENDING, W_KEYED_ITEM)], FOUND_),
    Op("wandb.status", lambda: WandB(require="val_loss < 0.2, eval.acc.1 > 0.9").status(W_REF),
       [w_with_run(w_run())], STATUS_),
    Op("wandb.status.queued", lambda: WandB(app_url="https://wandb.ai").status(W_QUEUED),
       [w_with_item(W_CLAIMED), w_with_run(w_run("running"))], STATUS_),
    Op("wandb.status.queued_keyed", lambda: WandB().status(
        RunRef("wandb", ITEM, {**W_QUEUED.scope, "run_id": "abc123"})),
       [w_with_run(None), w_with_item(W_PENDING)], STATUS_),
    Op("wandb.cancel", lambda: WandB().cancel(W_REF),
       [w_with_run(w_run("running")), gql({"stopRun": {"success": True}})], NONE_),
    Op("wandb.cancel.queued", lambda: WandB().cancel(W_QUEUED),
       [w_with_item(W_PENDING), gql({"project": {"runQueue": {"id": "Q"}}}),
        gql({"deleteFromRunQueue": {"success": True}})], NONE_),
    Op("wandb.cancel.claimed", lambda: WandB().cancel(W_QUEUED),
       [w_with_item(W_CLAIMED), w_with_run(w_run("running")), gql({"stopRun": {"success": True}})],
       NONE_),
    # Vi
    Op("vi.launch", lambda: _vi().launch(LaunchSpec({"flow": FLOW}, key=KEY)),
       [V_404, ok(v_run("Pending"))], REF_, creates=1),
    Op("vi.launch.flow_id", lambda: _vi().launch(LaunchSpec({"flow_id": "f1"})),
       [V_404, ok({"kind": "Flow", "spec": FLOW}), ok(v_run("Pending"))], REF_, creates=2),
    Op("vi.find", lambda: _vi().find(LaunchSpec({"flow": FLOW}, key=KEY)), [ok(v_run())], FOUND_),
    Op("vi.status", lambda: _vi().status(V_REF), [ok(v_run("Failed"))], STATUS_),
    Op("vi.cancel", lambda: _vi().cancel(V_REF),
       [ok(v_run("Running"), headers={"date": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        ok(v_run("Running"))], NONE_),
    Op("vi.list_runs", lambda: _vi().list_runs(limit=5),
       [ok({"items": [v_run(), v_run("Error", "r2")], "nextPage": "p2"}),
        ok({"items": [v_run("Running", "r3")], "nextPage": None})], (list,)),
    # Lume
    Op("lume.launch", lambda: Lume().launch(
        LaunchSpec({"flow_version": "f:v3", "source_path": "s3://b/x.csv"}, key=KEY)),
       [ok({"id": RID, "status": "CREATED"})], REF_, creates=0),
    Op("lume.status", lambda: Lume(partial=0.05, run_url="https://l/{run_id}").status(L_REF),
       [ok(L_RUN)], STATUS_),
    Op("lume.status.failed", lambda: Lume().status(L_REF),
       [ok({**L_RUN, "status": "CRASHED"})], STATUS_),
]  # fmt: skip
LAUNCHES = [op for op in OPS if op.creates is not None]


def drive(op: Op, answers: list[Response], *, limit: int = 25) -> tuple[list[Request], Any]:
    """Step the operation with ``FlowDriver`` (tests/core/helpers.py): request ``k`` gets
    ``answers[k]``, and past the end the last answer again; returns (requests, result). Fails
    on a runaway exchange (more than ``limit`` requests) and on a provider that sleeps."""
    driver = FlowDriver(FakeClock(), [*answers, *[answers[-1]] * limit], max_steps=limit)
    result = driver.run(op.start(), check_all_used=False)
    assert driver.sleeps == [], f"{op} asked to sleep: providers never read a clock"
    return driver.requests, result


def check_total(op: Op, answers: list[Response]) -> Any:
    """The operation returns a value of its type or raises a RunbridgeError; nothing else."""
    try:
        _, result = drive(op, answers)
    except RunbridgeError as exc:
        str(exc)  # its message can be made
        return exc
    assert isinstance(result, op.returns), f"{op} returned {result!r}"
    if isinstance(result, list):
        assert all(isinstance(value, RunStatus) for value in result), result
    for value in result if isinstance(result, list) else [result]:
        if isinstance(value, RunStatus):
            value.summary()
            json.dumps(value.to_dict(), default=str)
            value = value.ref
        if isinstance(value, RunRef):
            assert RunRef.parse(value.to_string()) == value
    return result


# -- the happy paths are right (so the fuzz below starts from real answers) -------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_the_happy_path_of_every_operation(op: Op) -> None:
    requests, result = drive(op, op.script)
    assert len(requests) == len(op.script), f"{op} sent {[r.path for r in requests]}"
    assert isinstance(result, op.returns), result
    assert (result is None) == (op.returns == NONE_), f"{op} found nothing"


# -- any answer, at any step ------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
@SETTINGS
@given(data=st.data())
def test_any_answer_at_any_step(op: Op, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(op.script) - 1), label="step")
    status = data.draw(STATUSES, label="status")
    headers = data.draw(HEADERS, label="headers")
    content = data.draw(bodies(), label="body")
    answers = list(op.script)
    answers[at] = Response(status, headers, content)
    check_total(op, answers)


# -- the right answer, with one field wrong ---------------------------------------------------
def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]  # (the root too: the whole body of the wrong type)
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    elif isinstance(value, str) and value[:1] in "{[":  # a JSON string (W&B's JSONString)
        try:
            out += _paths(json.loads(value), (*prefix, "<json>"))
        except ValueError:
            pass
    return out


_DELETE = object()


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return None if new is _DELETE else new
    head, rest = path[0], path[1:]
    if head == "<json>":
        return json.dumps(_replace(json.loads(value), rest, new))
    copy = dict(value) if isinstance(value, dict) else list(value)
    if rest or new is not _DELETE:
        copy[head] = _replace(value[head], rest, new)
    elif isinstance(copy, dict):
        del copy[head]
    else:
        copy.pop(head)
    return copy


def _stream_messages(content: bytes) -> list[tuple[int, Any]]:
    out, offset = [], 0
    while offset + 5 <= len(content):
        flags, length = content[offset], int.from_bytes(content[offset + 1 : offset + 5], "big")
        out.append((flags, json.loads(content[offset + 5 : offset + 5 + length])))
        offset += 5 + length
    return out


@pytest.mark.parametrize("op", OPS, ids=repr)
@SETTINGS
@given(data=st.data())
def test_the_right_answer_with_one_field_wrong(op: Op, data: st.DataObject) -> None:
    candidates = [i for i, r in enumerate(op.script) if r.content]
    assume(candidates)
    at = data.draw(st.sampled_from(candidates), label="step")
    original = op.script[at]
    stream = original.headers.get("content-type") == "application/connect+json"
    body: Any = _stream_messages(original.content) if stream else json.loads(original.content)
    paths = _paths(body)
    assume(paths)
    path = data.draw(st.sampled_from(paths), label="path")
    new = data.draw(JSON | st.just(_DELETE), label="value")
    try:
        body = _replace(body, path, new)
    except (KeyError, IndexError, TypeError):  # deleting a frame's flag: keep the original
        return
    if stream:
        if not isinstance(body, list):  # the whole stream replaced: one message of it
            body = [(0, body)]
        content = b"".join(
            envelope(_json_bytes(m), f if isinstance(f, int) and 0 <= f < 256 else 0)
            for f, m in (
                x if isinstance(x, (list, tuple)) and len(x) == 2 else (0, x) for x in body
            )
        )
    else:
        content = _json_bytes(body)
    answers = list(op.script)
    answers[at] = dataclasses.replace(original, content=content)
    check_total(op, answers)


@pytest.mark.parametrize(
    ("op", "path", "value"),
    [
        # the fields the issue names
        ("flyte.status", ("details", "action", "attempts"), 3),
        ("flyte.status", ("details", "action", "attempts"), "a0"),
        ("flyte.status", ("details", "action", "attempts", 0, "attempt"), "first"),
        ("flyte.status", ("details", "action", "attempts", 0, "attempt"), {"n": 1}),
        ("flyte.status", ("details", "action", "attempts", 0, "outputs"), "s3://x"),
        ("flyte.status", ("details", "action", "status"), "ACTION_PHASE_SUCCEEDED"),
        ("flyte.join", ("details", "action", "id"), "a0"),
        ("wandb.cancel", ("data", "project", "run", "state"), {"raw": "running"}),
        ("wandb.cancel", ("data", "project", "run", "state"), ["running"]),
        (
            "wandb.status.queued",
            ("data", "project", "runQueue", "runQueueItem", "associatedRunId"),
            {"id": "abc123"},
        ),
        ("langgraph.find", (0, "metadata"), ["runbridge_key"]),
        ("langgraph.find", (0, "metadata"), "runbridge_key"),
        ("vi.status", ("status", "conditions", 1, "lastTransitionTime"), 10**400),
        ("lume.status", ("metadata", "results", "rejected_rows"), 10**400),
        ("lume.status", ("metadata", "pipeline", "duration_seconds"), 10**400),
        ("lume.status", ("created_at",), 10**400),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_the_fields_named_in_the_issue(op: str, path: tuple[Any, ...], value: Any) -> None:
    (found,) = [o for o in OPS if o.name == op]
    answers = list(found.script)
    at = 1 if op in ("flyte.join",) else 0
    if op == "flyte.join":
        answers[0] = f_stream(
            {"details": _replace({"action": f_action()}, path[1:], value)}, end={}
        )
    else:
        answers[at] = ok(_replace(json.loads(answers[at].content), path, value))
    check_total(found, answers)


@pytest.mark.parametrize(
    "literal",
    [
        {"collection": 3},
        {"collection": {"literals": 3}},
        {"collection": {"literals": "ab"}},
        {"collection": ["x"]},
        {"map": {"literals": [1, 2]}},
        {"map": "m"},
        {"map": {"literals": {"k": {"scalar": {"primitive": {"floatValue": "not a number"}}}}}},
        {"scalar": {"primitive": "p"}},
        {"scalar": {"primitive": 5}},
        {"scalar": {"primitive": {"integer": [1]}}},
        {"scalar": {"primitive": {"floatValue": "1e400"}}},
        {"scalar": {"union": {"value": {"collection": {"literals": {"a": 1}}}}}},
    ],
    ids=repr,
)
def test_flyte_literal_collections_and_maps_of_the_wrong_type(literal: Any) -> None:
    (found,) = [o for o in OPS if o.name == "flyte.status"]
    outputs = {"outputs": {"literals": [{"name": "o0", "value": literal}]}}
    result = check_total(found, [found.script[0], ok(outputs)])
    assert isinstance(result, RunStatus)  # the status stands; only the values are odd
    assert result.state.value == "SUCCEEDED"


# -- a malformed 2xx answer to a launch --------------------------------------------------------
def _wandb_error_answer(body: Any) -> bool:
    """A W&B 200 that is, by protocol, an error or a "not enqueued" answer, not malformed."""
    if not isinstance(body, dict):
        return False
    if body.get("errors") or body.get("error"):
        return True
    data = body.get("data")
    payload = data.get("pushToRunQueueByName", 0) if isinstance(data, dict) else 0
    return payload is None or (
        isinstance(payload, dict) and payload.get("runQueueItemId") in (None, "")
    )


@pytest.mark.parametrize("op", LAUNCHES, ids=repr)
@SETTINGS
@given(data=st.data())
def test_a_malformed_2xx_launch_answer_is_a_protocol_error_or_a_ref(
    op: Op, data: st.DataObject
) -> None:
    assert op.creates is not None
    status = data.draw(st.sampled_from([200, 201, 202]), label="status")
    content = data.draw(bodies(), label="body")
    if op.name.startswith("wandb"):
        try:
            decoded: Any = json.loads(content)
        except ValueError:
            decoded = None
        assume(not _wandb_error_answer(decoded))
    answers = list(op.script)
    answers[op.creates] = Response(status, {}, content)
    try:
        requests, ref = drive(op, answers)
    except ProtocolError as exc:
        assert len(str(exc)) < 1200
        return
    except RunbridgeError as exc:
        pytest.fail(f"{op}: a 2xx launch answer raised {type(exc).__name__}: {exc}")
    assert isinstance(ref, RunRef)
    assert len(requests) == op.creates + 1  # nothing sent after the launch answer


MARKER = "shape-marker-6613"


@pytest.mark.parametrize("op", LAUNCHES, ids=repr)
def test_a_launch_protocol_error_quotes_the_answer(op: Op) -> None:
    assert op.creates is not None
    answers = list(op.script)
    answers[op.creates] = ok({"unexpected": MARKER})
    try:
        _, ref = drive(op, answers)
    except ProtocolError as exc:
        assert MARKER in str(exc)
        return
    # the provider knows the run it made without reading the answer (a name it chose)
    assert isinstance(ref, RunRef)
    assert op.name in ("flyte.launch", "flyte.launch.upload", "vi.launch", "vi.launch.flow_id")


@pytest.mark.parametrize(
    ("op", "body", "run_id"),
    [
        ("langgraph.launch.stateless", {"run_id": "run-77"}, "run-77"),
        ("rest.launch", {"run": {"id": {"nested": "r-78"}}}, "r-78"),
        ("wandb.launch", {"data": {"pushToRunQueueByName": {"runQueueItemId": ["item-79"]}}},
         "item-79"),
        ("lume.launch", {"run_id": {"id": "r-80"}, "status": "CREATED"}, "r-80"),
        ("flyte.launch.server_named", {"run": {"action": {"id": {"name": "r-81"}}}}, "r-81"),
    ],
)  # fmt: skip
def test_a_launch_protocol_error_names_the_run_id_it_could_read(
    op: str, body: Any, run_id: str
) -> None:
    (found,) = [o for o in LAUNCHES if o.name == op]
    assert found.creates is not None
    answers = list(found.script)
    answers[found.creates] = ok(body)
    with pytest.raises(ProtocolError, match=run_id):
        drive(found, answers)


def test_a_launch_answer_with_a_readable_id_but_no_thread_keeps_the_thread_it_made() -> None:
    (found,) = [o for o in LAUNCHES if o.name == "langgraph.launch.keyed"]
    _, ref = drive(found, [found.script[0], ok({"run_id": "run-82"})])
    assert ref == RunRef("langgraph", "run-82", {"thread_id": TK})


def test_a_flyte_launch_answer_without_project_and_domain_keeps_those_asked_for() -> None:
    (found,) = [o for o in LAUNCHES if o.name == "flyte.launch.server_named"]
    _, ref = drive(found, [ok({"run": {"action": {"id": {"run": {"name": "r-83"}}}}})])
    assert ref == RunRef("flyte", "r-83", {"project": "p", "domain": "d"})


@pytest.mark.parametrize("op", ["flyte.launch", "vi.launch"])
def test_a_launch_answer_that_is_not_json_proves_nothing(op: str) -> None:
    # a proxy's 200 garbage page does not mean the run was made: a ProtocolError naming the
    # run runbridge chose, which the launch flow treats as a lost answer (it looks it up)
    (found,) = [o for o in LAUNCHES if o.name == op]
    assert found.creates is not None
    answers = list(found.script)
    answers[found.creates] = Response(200, {}, b"<html>ok</html>")
    with pytest.raises(ProtocolError, match="cannot be read") as info:
        drive(found, answers)
    assert (F_REF if op.startswith("flyte") else V_REF).id in str(info.value)


# -- webhook deliveries (Lume) -----------------------------------------------------------------
@SETTINGS
@given(
    body=bodies() | JSON.map(lambda v: _json_bytes({"data": v})),
    headers=st.dictionaries(TEXT, TEXT, max_size=3),
    signed=st.booleans(),
)
def test_any_lume_webhook_delivery(body: bytes, headers: dict[str, str], signed: bool) -> None:
    secret = "s3cret"
    if signed:
        headers = {**headers, "X-Lume-Signature-256": sign(body, secret)}
    for provider in (Lume(), Lume(partial="accept"), "lume"):
        try:
            status = parse_delivery(provider, body, headers, secret=secret if signed else None)
        except (ProtocolError, WebhookError):
            continue
        assert isinstance(status, RunStatus)
        assert RunRef.parse(status.ref.to_string()) == status.ref


@SETTINGS
@given(data=st.data())
def test_a_lume_delivery_with_one_field_wrong(data: st.DataObject) -> None:
    delivery = {"event": "run.completed", "data": {**L_RUN, "run_id": RID, "results": {}}}
    path = data.draw(st.sampled_from(_paths(delivery)))
    body = _replace(delivery, path, data.draw(JSON | st.just(_DELETE)))
    try:
        status = parse_delivery(Lume(partial=0.1), _json_bytes(body), {})
    except ProtocolError:
        return
    assert isinstance(status, RunStatus)


# -- error bodies ----------------------------------------------------------------------------
PROVIDERS = [LangGraph(), REST, Flyte(), WandB(), Vi(organization_id=ORG), Lume()]


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@SETTINGS
@given(status=STATUSES, headers=HEADERS, content=bodies())
def test_error_for_any_error_body(provider: Any, status: int, headers: Any, content: bytes) -> None:
    assume(not 200 <= status < 300)
    error = provider.error_for(Response(status, headers, content))
    assert isinstance(error, PlatformError)
    assert isinstance(str(error), str)
    assert error.body is None or len(error.body) <= 500
