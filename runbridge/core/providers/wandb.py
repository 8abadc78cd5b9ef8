"""``wandb``: Weights & Biases runs, over the GraphQL API that the ``wandb`` package uses.

Facts and their sources are in docs/platforms/wandb.md (wandb 0.31.0). In short:

* One endpoint: ``POST {base}/graphql`` with ``{"query", "variables", "operationName"}``,
  HTTP Basic auth ``api:<API key>``. Errors come as ``{"errors": [{"message": ...}]}``, with
  HTTP 200 (a GraphQL error) or an error status (401 for a bad key).
* A run is addressed by its path ``entity/project/run_id`` (``run_id`` is the run's *name* in
  GraphQL; its storage ``id`` is another, opaque value that stop needs). A :class:`RunRef` has
  the run id as ``id`` and ``entity``/``project`` in its scope; ``client.ref("e/p/id")`` and a
  run page URL are accepted too.
* States: pending, running, preempting (not terminal), finished, failed, crashed, killed,
  preempted (terminal as a failure by default; ``preempted="wait"`` waits for a resume).
  The run summary is in ``RunStatus.outputs["summary"]``; ``require=["val_loss < 0.2"]``
  turns a ``finished`` run whose summary misses a condition into FAILED (raw state kept).
* Launch goes through W&B Launch: ``pushToRunQueueByName`` puts a launch spec on a run queue
  and answers a queue item id. The returned ref is the *queue item* (scope ``kind="queued"``);
  its status follows the item (``runQueueItem { state associatedRunId }``) until an agent
  starts the run, then reports the run, with ``RunStatus.ref`` being the run's own ref.
* Stop: the ``stopRun`` mutation (the SDK's ``Run.stop()``) on the run's storage id; the run
  then ends ``killed``. A queue item that no agent took yet is deleted from its queue instead
  (``deleteFromRunQueue``, the SDK's ``QueuedRun.delete()``).
* Idempotent launch: the launch spec's ``run_id`` is honoured by the launch agent, so a key
  gives a run id derived from it; ``find`` looks that run up by name, and while no run exists,
  the queue item whose spec carries that run id, so a push whose answer was lost is not pushed
  again.
* No state: the provider remembers nothing between operations (no item -> run cache, no record
  of its deletes); a queued ref's status reads W&B each time (its run first when the ref knows
  the run id), and an item gone before any run started is CANCELLED (``deleted``) for everyone.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from ..conditions import Condition, evaluate, parse_conditions
from ..errors import (
    AuthError,
    BadRequest,
    ConfigError,
    Conflict,
    PlatformError,
    PlatformUnavailable,
    ProtocolError,
    RateLimited,
    RunNotFound,
)
from ..http import Exchange, Request, Response
from ..models import LaunchSpec, RunRef, RunStatus, parse_time
from ..states import RunState
from ._parse import excerpt, ident, items, mapping, text, unreadable_launch
from .base import Provider

__all__ = [
    "LAUNCH_DEFAULT_PROJECT",
    "QUEUE_ITEM_STATES",
    "STATES",
    "WandB",
    "app_url_for",
    "run_id_for_key",
]

STATES: dict[str, RunState] = {
    "pending": RunState.PENDING,
    "running": RunState.RUNNING,
    "preempting": RunState.RUNNING,
    "finished": RunState.SUCCEEDED,
    "failed": RunState.FAILED,
    "crashed": RunState.FAILED,
    "killed": RunState.CANCELLED,
    "preempted": RunState.FAILED,
}
"""Run states (``Run.state``, lower case on the wire). ``preempting`` is on its way to
``preempted``; ``preempted`` is FAILED unless the provider's ``preempted="wait"`` makes it
PENDING (a Launch agent may requeue a preempted run under the same id, which resumes it).
``finished`` becomes FAILED when a ``require`` condition does not hold."""

QUEUE_ITEM_STATES: dict[str, RunState] = {
    "PENDING": RunState.PENDING,
    "LEASED": RunState.PENDING,
    "CLAIMED": RunState.PENDING,
    "FINISHED": RunState.PENDING,
    "FAILED": RunState.FAILED,
}
"""States of a Launch queue item *before* it has a run (once ``associatedRunId`` is set the
run's state is reported). Upper case on the wire; the client only lower-cases them."""

STATE_MESSAGES: dict[str, str] = {
    "failed": "the run ended with a non-zero exit status",
    "crashed": "the run stopped sending heartbeats (crashed)",
    "killed": "the run was stopped before it could finish",
    "preempted": "the run was preempted",
}
ENDED = frozenset({"finished", "failed", "crashed", "killed"})
"""Raw states after which stopping a run has no point."""

LAUNCH_DEFAULT_PROJECT = "model-registry"
"""The project that holds an entity's run queues unless a launch says otherwise."""
_RESERVED_ID_CHARS = ":;,#?/'"
_CONTROL_PARAMS = frozenset(
    {"queue", "queue_project", "priority", "template_variables", "docker_image"}
)

RUN_QUERY = """query RunbridgeRun($entity: String!, $project: String!, $name: String!) {
  project(name: $project, entityName: $entity) {
    run(name: $name) { id name displayName state createdAt heartbeatAt summaryMetrics }
  }
}"""
QUEUE_ITEM_QUERY = """query RunbridgeQueueItem($projectName: String!, $entityName: String!, \
$runQueue: String!, $itemId: ID!) {
  project(name: $projectName, entityName: $entityName) {
    runQueue(name: $runQueue) { runQueueItem(id: $itemId) { id state associatedRunId } }
  }
}"""
QUEUE_ID_QUERY = """query RunbridgeRunQueue($projectName: String!, $entityName: String!, \
$runQueue: String!) {
  project(name: $projectName, entityName: $entityName) { runQueue(name: $runQueue) { id } }
}"""
QUEUE_ITEMS_QUERY = """query RunbridgeRunQueueItems($projectName: String!, $entityName: String!, \
$runQueue: String!) {
  project(name: $projectName, entityName: $entityName) {
    runQueue(name: $runQueue) {
      runQueueItems(first: 100) { edges { node { id state associatedRunId runSpec } } }
    }
  }
}"""
"""The items of a run queue with their launch specs, for ``find``. The SDK lists items with
``runQueueItems(first: 100)`` (``RunQueue._get_items``, ``wandb/apis/public/jobs.py:713-748``);
``runSpec`` is what ``popFromRunQueue`` hands the agent (``wandb/sdk/launch/api.py:271-302``);
that an item shows it is assumed (docs/platforms/wandb.md, section 6)."""
_NO_ITEM_SPEC = 'Cannot query field "runSpec" on type "RunQueueItem"'
DELETE_ITEM_MUTATION = """mutation RunbridgeDeleteFromRunQueue($queueID: ID!, \
$runQueueItemId: ID!) {
  deleteFromRunQueue(input: {queueID: $queueID, runQueueItemId: $runQueueItemId}) { success }
}"""
STOP_RUN_MUTATION = """mutation StopRun($id: ID!) {
  stopRun(input: {id: $id}) { success }
}"""
_NO_RUNSPEC = 'Cannot query field "runSpec" on type "PushToRunQueueByNamePayload"'


def _push_mutation(variables: Mapping[str, Any], *, with_run_spec: bool) -> str:
    params = ["$entityName: String!", "$projectName: String!", "$queueName: String!"]
    params.append("$runSpec: JSONString!")
    fields = [
        "entityName: $entityName",
        "projectName: $projectName",
        "queueName: $queueName",
        "runSpec: $runSpec",
    ]
    if "priority" in variables:
        params.append("$priority: Int")
        fields.append("priority: $priority")
    if "templateVariableValues" in variables:
        params.append("$templateVariableValues: JSONString")
        fields.append("templateVariableValues: $templateVariableValues")
    selection = "runQueueItemId runSpec" if with_run_spec else "runQueueItemId"
    return (
        f"mutation pushToRunQueueByName({', '.join(params)}) {{\n"
        f"  pushToRunQueueByName(input: {{{', '.join(fields)}}}) {{ {selection} }}\n}}"
    )


def run_id_for_key(key: str) -> str:
    """The W&B run id of a keyed launch: stable, short, and legal in a run path."""
    return "rb-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


_FORGE_HOSTS = {"forge.coreweave.com": "api.wandb.ai", "qa.forge.coreweave.com": "api.qa.wandb.ai"}
"""CoreWeave Forge hosts and the W&B API host behind each (``wandb/sdk/lib/urls.py``)."""


def app_url_for(api_url: str) -> str:
    """The W&B app (web UI) URL for an API base URL, derived as ``wandb`` 0.31 does
    (``wandb/util.py:api_to_app_url``): the W&B cloud API (``https://api.wandb.ai``) and the
    Forge hosts -> ``https://forge.coreweave.com/wandb``; another ``https://api.X`` ->
    ``https://app.X``; anything else (a W&B Server serving both) unchanged."""
    url = api_url.rstrip("/")
    host = urlsplit(url).hostname or ""
    for forge, api in _FORGE_HOSTS.items():
        if host in (forge, f"api.{forge}", api):
            return f"https://{forge}/wandb"
    if "://api.wandb.test" in url:
        return url.replace("://api.", "://app.", 1)
    if "://api.wandb." in url:
        return url.replace("://api.", "://", 1)
    if "://api." in url:
        return url.replace("://api.", "://app.", 1)
    return url


def _json_object(value: Any) -> tuple[dict[str, Any], str | None]:
    """A JSONString field (``summaryMetrics``) as a dict, or ({}, why it is unreadable)."""
    if value is None or value == "":
        return {}, None
    if isinstance(value, Mapping):
        return dict(value), None
    if isinstance(value, (str, bytes)):
        try:
            decoded = json.loads(value, strict=False)
        except ValueError as exc:
            return {}, f"not valid JSON ({exc})"
        if isinstance(decoded, Mapping):
            return dict(decoded), None
        return {}, f"a JSON {type(decoded).__name__}, not an object"
    return {}, f"a {type(value).__name__}, not a JSON object"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"wandb: {what} must be a non-empty string, got {value!r}")
    return value.strip()


class WandB(Provider):
    """Weights & Biases. Options (all keyword-only):

    * ``require``: conditions on the run summary (``"val_loss < 0.2"``, a list, or several in
      one string separated by ``,``/``and``); a ``finished`` run that misses one ends FAILED.
    * ``preempted``: ``"failed"`` (default: a preempted run ended) or ``"wait"`` (keep waiting:
      W&B Launch may requeue it under the same id and resume it).
    * ``entity``, ``project``: defaults for references (``client.ref("run_id")``) and launches.
    * ``queue``, ``queue_project``: the default run queue for launches, and the project that
      holds it (``"model-registry"``, W&B's default).
    * ``app_url``: the W&B web UI, for ``RunStatus.url`` (e.g. ``"https://wandb.ai"``);
      default ``app_url_for(<the client's base URL>)``, the SDK's own derivation; ``""``: no URL.
    """

    name = "wandb"
    states = STATES
    ref_scope = ("entity", "project")
    supports_find = True

    def __init__(
        self,
        *,
        require: str | Iterable[str] | None = None,
        preempted: Literal["failed", "wait"] | str = "failed",
        entity: str | None = None,
        project: str | None = None,
        queue: str | None = None,
        queue_project: str = LAUNCH_DEFAULT_PROJECT,
        app_url: str | None = None,
    ) -> None:
        try:
            self.require: tuple[Condition, ...] = parse_conditions(require)
        except ConfigError as exc:
            raise ConfigError(f"wandb: require: {exc}") from None
        if preempted not in ("failed", "wait"):
            raise ConfigError(
                f"wandb: preempted must be 'failed' (a preempted run has ended) or 'wait' "
                f"(keep waiting for it to be resumed), got {preempted!r}"
            )
        self.preempted = preempted
        self.entity = _text(entity, "entity") if entity is not None else None
        self.project = _text(project, "project") if project is not None else None
        self.queue = _text(queue, "queue") if queue is not None else None
        self.queue_project = _text(queue_project, "queue_project")
        if app_url is not None and (
            not isinstance(app_url, str)
            or (app_url != "" and not app_url.startswith(("http://", "https://")))
        ):
            raise ConfigError(
                f"wandb: app_url must be an http(s) URL (or '' for no run URLs), got {app_url!r}"
            )
        self.app_url = app_url.rstrip("/") if app_url else app_url
        # Nothing else: a provider keeps no state between operations (it is shared by every
        # thread and wait of a client), so what a queued launch became is read from W&B.

    def auth_headers(self, token: str) -> dict[str, str]:
        credentials = base64.b64encode(f"api:{token}".encode()).decode("ascii")
        return {"Authorization": f"Basic {credentials}"}

    # -- references ----------------------------------------------------------------------------
    def check_ref(self, ref: RunRef) -> RunRef:
        if ref.platform == self.name:
            ref = self._normalize(ref)
        return super().check_ref(ref)

    def _normalize(self, ref: RunRef) -> RunRef:
        scope = dict(ref.scope)
        run_id = ref.id
        if "/" in run_id and scope.get("kind") != "queued":  # (item ids are base64: "/" is data)
            if "://" in run_id:  # a run page URL, as run_url builds it (parts URL-quoted)
                parts = [unquote(part) for part in urlsplit(run_id).path.split("/") if part]
                if len(parts) > 4 and parts[-2] == "runs":  # an app under a path (Forge's /wandb)
                    parts = parts[-4:]
            else:
                parts = [part for part in run_id.split("/") if part]
            if len(parts) == 4 and parts[2] == "runs":
                parts = [parts[0], parts[1], parts[3]]
            if len(parts) != 3:
                raise ConfigError(
                    f"wandb: cannot read run path {run_id!r}: expected 'entity/project/run_id' "
                    "or a run page URL (.../entity/project/runs/run_id)"
                )
            for key, value in (("entity", parts[0]), ("project", parts[1])):
                if scope.get(key, value) != value:
                    raise ConfigError(
                        f"wandb: run path {run_id!r} names {key} {value!r} but the scope says "
                        f"{scope[key]!r}"
                    )
                scope[key] = value
            run_id = parts[2]
        if not scope.get("entity") and self.entity:
            scope["entity"] = self.entity
        if not scope.get("project") and self.project:
            scope["project"] = self.project
        if scope.get("kind") == "queued":
            if not scope.get("queue"):
                raise ConfigError(
                    f"wandb: a queued-run reference needs the queue name in its scope; got {ref}"
                )
            scope.setdefault("queue_project", self.queue_project)
        elif "kind" in scope and scope["kind"] != "run":
            raise ConfigError(
                f"wandb: scope kind must be 'run' or 'queued', got {scope['kind']!r} in {ref}"
            )
        if scope == dict(ref.scope) and run_id == ref.id:
            return ref
        return RunRef(self.name, run_id, scope)

    @staticmethod
    def _queued(ref: RunRef) -> bool:
        return ref.scope.get("kind") == "queued"

    def _run_ref(self, entity: str, project: str, run_id: str) -> RunRef:
        return RunRef(self.name, run_id, {"entity": entity, "project": project})

    # -- GraphQL plumbing ----------------------------------------------------------------------
    @staticmethod
    def _graphql(
        query: str, variables: Mapping[str, Any], name: str, *, retry: bool | None = True
    ) -> Request:
        """A GraphQL POST. Queries are safe to resend (``retry=True``); a push is not."""
        body = {"query": query, "variables": dict(variables), "operationName": name}
        return Request("POST", "/graphql", json=body, retry=retry)

    def error_message(self, body: Any) -> str | None:
        messages = self._messages(body)
        if messages:
            return "; ".join(messages)
        return super().error_message(body)

    @staticmethod
    def _messages(body: Any) -> list[str]:
        """The messages of ``{"errors": [{"message"}...]}`` or ``{"error": ...}`` (the two
        forms the SDK reads, ``wandb/util.py:parse_backend_error_messages``)."""
        if not isinstance(body, Mapping):
            return []
        found = body.get("error")
        errors = [found] if found else body.get("errors")
        if not isinstance(errors, list):
            return []
        out = []
        for error in errors:
            if isinstance(error, str) and error:
                out.append(error)
            elif isinstance(error, Mapping) and isinstance(error.get("message"), str):
                out.append(error["message"])
        return out

    def _data(self, response: Response) -> Mapping[str, Any]:
        """The ``data`` of a GraphQL answer, or the error it carries."""
        if not response.ok:
            raise self.error_for(response)
        body = response.json()
        if not isinstance(body, Mapping):
            raise ProtocolError(
                f"wandb: a GraphQL answer must be a JSON object, got {excerpt(body)}"
            )
        if body.get("errors") or body.get("error"):
            messages = self._messages(body)
            raise self._graphql_error(response, messages or [excerpt(body.get("errors"))])
        data = body.get("data")
        if not isinstance(data, Mapping):
            raise ProtocolError(f"wandb: the GraphQL answer has no data: {excerpt(body)}")
        return data

    def _graphql_error(self, response: Response, messages: list[str]) -> PlatformError:
        """A GraphQL error answered with HTTP 200, classified by its text."""
        text = "; ".join(messages)
        lowered = text.lower()
        cls: type[PlatformError]
        if any(
            word in lowered
            for word in ("not logged in", "permission denied", "unauthorized", "not authorized")
        ):
            cls = AuthError
        elif "not found" in lowered or "does not exist" in lowered:
            cls = RunNotFound
        elif "rate limit" in lowered or "too many requests" in lowered:
            cls = RateLimited
        elif any(
            word in lowered for word in ("internal", "timed out", "timeout", "unavailable", "again")
        ):
            cls = PlatformUnavailable
        else:
            cls = BadRequest
        return cls(
            text,
            platform=self.name,
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
            body=response.text[:500],
        )

    def _not_found(self, response: Response, message: str) -> RunNotFound:
        return RunNotFound(
            message,
            platform=self.name,
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
            body=response.text[:500],
        )

    def _read_run(
        self, entity: str, project: str, run_id: str
    ) -> Exchange[tuple[Response, Mapping[str, Any] | None, bool]]:
        """(response, the run or None, does the project exist?)"""
        variables = {"entity": entity, "project": project, "name": run_id}
        response = yield self._graphql(RUN_QUERY, variables, "RunbridgeRun")
        data = self._data(response)
        project_data = data.get("project")
        if project_data is None:
            return response, None, False
        if not isinstance(project_data, Mapping):
            raise ProtocolError(f"wandb: unexpected project in the answer: {excerpt(project_data)}")
        run = project_data.get("run")
        if run is not None and not isinstance(run, Mapping):
            raise ProtocolError(f"wandb: unexpected run in the answer: {excerpt(run)}")
        return response, run, True

    def _run_or_raise(self, ref: RunRef) -> Exchange[Mapping[str, Any]]:
        entity, project = ref.scope["entity"], ref.scope["project"]
        response, run, project_found = yield from self._read_run(entity, project, ref.id)
        if run is None:
            where = f"{entity}/{project}"
            raise self._not_found(
                response,
                f"no run {ref.id!r} in {where}"
                if project_found
                else f"no project {where} (or no access to it) for run {ref.id!r}",
            )
        return run

    # -- status --------------------------------------------------------------------------------
    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        if self._queued(ref):
            return (yield from self._queued_status(ref))
        run = yield from self._run_or_raise(ref)
        return self.parse_run(ref, run)

    def parse_run(self, ref: RunRef, run: Mapping[str, Any]) -> RunStatus:
        """A RunStatus from the run object of the GraphQL answer."""
        raw = run.get("state")
        if not isinstance(raw, str) or not raw:
            raise ProtocolError(f"wandb: the run has no state: {excerpt(dict(run))}")
        state = self.map_state(raw)
        message = STATE_MESSAGES.get(raw)
        if raw == "preempted" and self.preempted == "wait":
            state = RunState.PENDING
            message = "the run was preempted; waiting for it to be resumed (preempted='wait')"
        summary, unreadable = _json_object(run.get("summaryMetrics"))
        outputs: dict[str, Any] = {"summary": summary}
        if unreadable:
            outputs["summary_error"] = f"summaryMetrics is {unreadable}"
        display_name = run.get("displayName")
        if isinstance(display_name, str) and display_name:
            outputs["display_name"] = display_name
        if raw == "finished" and self.require:
            results = evaluate(self.require, summary)
            outputs["require"] = [result.to_dict() for result in results]
            failed = [result for result in results if not result.passed]
            if failed:
                state = RunState.FAILED
                message = "summary condition not met: " + "; ".join(
                    result.explain("the run summary") for result in failed
                )
        name = run.get("name")
        if isinstance(name, str) and name and name != ref.id:
            ref = RunRef(self.name, name, dict(ref.scope))
        heartbeat = parse_time(run.get("heartbeatAt"))
        return RunStatus(
            ref=ref,
            state=state,
            raw_state=raw,
            url=self.run_url(ref),
            message=message,
            outputs=outputs,
            created_at=parse_time(run.get("createdAt")),
            updated_at=heartbeat,
            ended_at=heartbeat if state.is_terminal else None,
        )

    def run_url(self, ref: RunRef) -> str | None:
        """``{app_url}/{entity}/{project}/runs/{run_id}``, as ``Run.url`` builds it; the app URL
        is the ``app_url`` option, else derived from the client's base URL as the SDK does
        (``app_url_for``). A queue item has no page: its run's URL comes once it has a run."""
        app_url = self.app_url
        if app_url is None and self.base_url:
            app_url = app_url_for(self.base_url)
        if not app_url or self._queued(ref):
            return None
        parts = (ref.scope["entity"], ref.scope["project"], "runs", ref.id)
        return app_url + "/" + "/".join(quote(part, safe="") for part in parts)

    # -- queue items ---------------------------------------------------------------------------
    def _read_item(self, ref: RunRef) -> Exchange[tuple[Response, Mapping[str, Any] | None]]:
        s = ref.scope
        variables = {
            "projectName": s["queue_project"],
            "entityName": s.get("queue_entity") or s["entity"],
            "runQueue": s["queue"],
            "itemId": ref.id,
        }
        response = yield self._graphql(QUEUE_ITEM_QUERY, variables, "RunbridgeQueueItem")
        data = self._data(response)
        project = data.get("project")
        queue = project.get("runQueue") if isinstance(project, Mapping) else None
        if not isinstance(queue, Mapping):
            where = f"{variables['entityName']}/{s['queue_project']}"
            raise self._not_found(response, f"no run queue {s['queue']!r} in {where}")
        item = queue.get("runQueueItem")
        if item is not None and not isinstance(item, Mapping):
            raise ProtocolError(f"wandb: unexpected queue item in the answer: {excerpt(item)}")
        return response, item

    @staticmethod
    def _item_deleted(ref: RunRef) -> RunStatus:
        """A queue item that is gone before a run started: deleted from its queue (by a cancel,
        runbridge's or anyone's). Nothing runs, nothing will: CANCELLED."""
        return RunStatus(
            ref,
            RunState.CANCELLED,
            "deleted",
            message=f"queue item {ref.id} is no longer in run queue {ref.scope['queue']!r} and "
            "no run started for it (it was deleted from the queue)",
        )

    def _queued_status(self, ref: RunRef) -> Exchange[RunStatus]:
        """The status of a queued launch: its run's once an agent started it, else the item's.

        Read from W&B each time (no memory in the provider): with a known run id (a keyed
        launch, or ``run_id`` given) the run is read first, so a started run costs one request;
        otherwise the item is read, then the run it names."""
        entity, project = ref.scope["entity"], ref.scope["project"]
        known = ref.scope.get("run_id")
        if known:
            _, run, _ = yield from self._read_run(entity, project, known)
            if run is not None:
                return self.parse_run(self._run_ref(entity, project, known), run)
        _, item = yield from self._read_item(ref)
        if item is None:
            return self._item_deleted(ref)
        run_id = ident(item.get("associatedRunId"))
        if run_id is None:
            return self._item_status(ref, item)
        run = None
        if run_id != known:  # (the known run was read above: it does not exist yet)
            _, run, _ = yield from self._read_run(entity, project, run_id)
        if run is None:  # claimed by an agent, the run not created yet
            raw = text(item.get("state")) or "CLAIMED"
            return RunStatus(
                ref,
                QUEUE_ITEM_STATES.get(raw.upper(), RunState.PENDING),
                raw,
                message=f"a launch agent took the queue item; waiting for run {run_id!r} "
                f"to start in {entity}/{project}",
                outputs={"queue_item": {"id": ref.id, "state": raw, "run_id": run_id}},
            )
        return self.parse_run(self._run_ref(entity, project, run_id), run)

    def _item_status(self, ref: RunRef, item: Mapping[str, Any]) -> RunStatus:
        raw = text(item.get("state")) or ""
        state = QUEUE_ITEM_STATES.get(raw.upper(), RunState.UNKNOWN)
        queue = f"{ref.scope.get('queue_entity') or ref.scope['entity']}/" + (
            f"{ref.scope['queue_project']}/{ref.scope['queue']}"
        )
        if state is RunState.FAILED:
            message = f"the launch agent failed queue item {ref.id} before a run started"
        else:
            message = f"queued in {queue}; no run yet"
        return RunStatus(
            ref,
            state,
            raw or "UNKNOWN",
            message=message,
            outputs={"queue_item": {"id": ref.id, "state": raw, "queue": queue}},
        )

    # -- launch and find -----------------------------------------------------------------------
    def _target(self, params: Mapping[str, Any]) -> tuple[str, str]:
        entity = params.get("entity") or self.entity
        project = params.get("project") or self.project
        if not entity or not project:
            raise ConfigError(
                "wandb: a launch needs params['entity'] and params['project'] (where the run "
                "is logged), or the entity/project options"
            )
        return _text(entity, "params['entity']"), _text(project, "params['project']")

    @staticmethod
    def _run_id(spec: LaunchSpec) -> str | None:
        run_id = spec.params.get("run_id")
        if run_id is None:
            return run_id_for_key(spec.key) if spec.key else None
        run_id = _text(run_id, "params['run_id']")
        bad = sorted({char for char in run_id if char in _RESERVED_ID_CHARS})
        if bad:
            raise ConfigError(
                f"wandb: params['run_id'] {run_id!r} contains {''.join(bad)!r}; W&B run ids "
                f"cannot contain any of {_RESERVED_ID_CHARS}"
            )
        return run_id

    def can_find(self, spec: LaunchSpec) -> bool:
        return spec.key is not None or spec.params.get("run_id") is not None

    def find(self, spec: LaunchSpec) -> Exchange[RunRef | None]:
        """The run of a launch with this key (or ``run_id``), or its queue item while no agent
        has started the run yet: so a push whose answer was lost is never pushed again."""
        entity, project = self._target(spec.params)
        run_id = self._run_id(spec)
        if run_id is None:
            return None
        _, run, _ = yield from self._read_run(entity, project, run_id)
        if run is not None:
            return self._run_ref(entity, project, run_id)
        params = spec.params
        queue = params.get("queue") or self.queue
        if not queue:
            return None  # (a launch needs a queue: nothing was pushed)
        scope = self._queued_scope(params, entity, project, run_id)
        variables = {
            "projectName": scope["queue_project"],
            "entityName": scope.get("queue_entity") or entity,
            "runQueue": scope["queue"],
        }
        response = yield self._graphql(QUEUE_ITEMS_QUERY, variables, "RunbridgeRunQueueItems")
        try:
            data = self._data(response)
        except BadRequest as exc:
            if _NO_ITEM_SPEC in exc.message:
                return None  # a server whose items show no spec: no item can be found by it
            raise
        listed = mapping(mapping(data.get("project")).get("runQueue")).get("runQueueItems")
        mine = []
        for edge in items(mapping(listed).get("edges")):
            node = mapping(mapping(edge).get("node"))
            item_id = ident(node.get("id"))
            launched, _ = _json_object(node.get("runSpec"))
            if item_id is not None and launched.get("run_id") == run_id:
                mine.append((text(node.get("state")) == "FAILED", item_id))
        if not mine:
            return None
        _, item_id = min(mine)  # the first listed that the agent did not fail, if any
        return RunRef(self.name, item_id, scope)

    def _queued_scope(
        self, params: Mapping[str, Any], entity: str, project: str, run_id: str | None
    ) -> dict[str, str]:
        """The scope of a queued launch's ref (the queue, where the run is logged, its id)."""
        queue = _text(params.get("queue") or self.queue, "params['queue']")
        queue_project = _text(params.get("queue_project") or self.queue_project, "queue_project")
        scope = {
            "kind": "queued",
            "entity": entity,
            "project": project,
            "queue": queue,
            "queue_project": queue_project,
        }
        queue_entity = params.get("queue_entity")
        if queue_entity is not None:
            queue_entity = _text(queue_entity, "params['queue_entity']")
            if queue_entity != entity:
                scope["queue_entity"] = queue_entity
        if run_id is not None:
            scope["run_id"] = run_id
        return scope

    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        params = dict(spec.params)
        queue = params.get("queue") or self.queue
        if not queue:
            raise ConfigError(
                "wandb: a launch needs params['queue'] (the W&B Launch run queue), or the "
                "queue option"
            )
        queue = _text(queue, "params['queue']")
        queue_project = _text(params.get("queue_project") or self.queue_project, "queue_project")
        entity, project = self._target(params)
        run_id = self._run_id(spec)
        launch_spec: dict[str, Any] = {
            key: value for key, value in params.items() if key not in _CONTROL_PARAMS
        }
        launch_spec["entity"], launch_spec["project"] = entity, project
        docker = launch_spec.get("docker") or {}
        if not isinstance(docker, Mapping):
            raise ConfigError("wandb: params['docker'] must be a mapping")
        docker = dict(docker)
        if params.get("docker_image"):
            docker["docker_image"] = _text(params["docker_image"], "params['docker_image']")
        if bool(launch_spec.get("job")) == bool(docker.get("docker_image")):
            raise ConfigError(
                "wandb: a launch needs exactly one of params['job'] (a job artifact, "
                "'entity/project/job-name:alias') or params['docker_image']"
            )
        launch_spec["docker"] = docker
        for key, default in (("resource", None), ("git", {}), ("overrides", {})):
            launch_spec.setdefault(key, default)
        if run_id is not None:
            launch_spec["run_id"] = run_id
        queue_entity = launch_spec.get("queue_entity")
        if queue_entity is not None:
            queue_entity = _text(queue_entity, "params['queue_entity']")
        try:
            run_spec = json.dumps(launch_spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"wandb: the launch params are not JSON: {exc}") from None
        variables: dict[str, Any] = {
            "entityName": queue_entity or entity,
            "projectName": queue_project,
            "queueName": queue,
            "runSpec": run_spec,
        }
        priority = params.get("priority")
        if priority is not None:
            if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
                raise ConfigError(
                    f"wandb: params['priority'] must be an int >= 0, got {priority!r}"
                )
            variables["priority"] = priority
        template_variables = params.get("template_variables")
        if template_variables is not None:
            if not isinstance(template_variables, Mapping):
                raise ConfigError("wandb: params['template_variables'] must be a mapping")
            variables["templateVariableValues"] = json.dumps(dict(template_variables))
        # Not resent blindly: a lost answer may hide an enqueued item (the flow looks it up).
        request = self._graphql(
            _push_mutation(variables, with_run_spec=True),
            variables,
            "pushToRunQueueByName",
            retry=None,
        )
        response = yield request
        try:
            data = self._data(response)
        except BadRequest as exc:
            if _NO_RUNSPEC not in exc.message:
                raise
            # An older server: the same push without the runSpec selection (nothing was
            # enqueued, the document failed validation).
            response = yield self._graphql(
                _push_mutation(variables, with_run_spec=False),
                variables,
                "pushToRunQueueByName",
                retry=None,
            )
            data = self._data(response)
        if "pushToRunQueueByName" not in data:
            raise unreadable_launch(self.name, "has no data.pushToRunQueueByName", response)
        payload = data.get("pushToRunQueueByName")
        if isinstance(payload, Mapping) and payload.get("runQueueItemId") not in (None, ""):
            item_id = ident(payload.get("runQueueItemId"))
            if item_id is None:
                raise unreadable_launch(
                    self.name, "has a runQueueItemId that is not an id", response
                )
            return RunRef(self.name, item_id, self._queued_scope(params, entity, project, run_id))
        if payload is not None and not isinstance(payload, Mapping):
            raise unreadable_launch(self.name, "has no pushToRunQueueByName object", response)
        # The SDK's own test for "nothing was enqueued" (``_launch_add.py:230``): no payload, or
        # one without an item id.
        raise BadRequest(
            f"W&B did not enqueue the launch (pushToRunQueueByName answered "
            f"{excerpt(payload)}); "
            f"check that run queue {queue!r} exists in {variables['entityName']}/"
            f"{queue_project} and that the API key may push to it",
            platform=self.name,
            status_code=response.status_code,
            body=response.text[:500],
        )

    # -- cancel --------------------------------------------------------------------------------
    def cancel(self, ref: RunRef) -> Exchange[None]:
        if not self._queued(ref):
            found = yield from self._run_or_raise(ref)
            yield from self._stop(ref, found)
            return None
        entity, project = ref.scope["entity"], ref.scope["project"]
        known = ref.scope.get("run_id")
        if known:
            _, run, _ = yield from self._read_run(entity, project, known)
            if run is not None:
                yield from self._stop(self._run_ref(entity, project, known), run)
                return None
        response, item = yield from self._read_item(ref)
        if item is None:
            return None  # gone from its queue before a run started: nothing left to stop
        associated = ident(item.get("associatedRunId"))
        if associated is None:
            if (text(item.get("state")) or "").upper() == "FAILED":
                return None  # the agent gave up on it: nothing runs
            yield from self._delete_item(ref)
            return None
        claimed = None
        if associated != known:  # (the known run was read above: it does not exist yet)
            response, claimed, _ = yield from self._read_run(entity, project, associated)
        if claimed is None:
            raise Conflict(
                f"run {associated!r} of queue item {ref.id} has been claimed by a launch agent "
                "but has not started yet, so it cannot be stopped; try again shortly",
                platform=self.name,
                status_code=response.status_code,
            )
        yield from self._stop(self._run_ref(entity, project, associated), claimed)
        return None

    def _stop(self, ref: RunRef, run: Mapping[str, Any]) -> Exchange[None]:
        state = run.get("state")
        if isinstance(state, str) and state in ENDED:
            return None  # already over; stopping it would change nothing
        storage_id = ident(run.get("id"))
        if storage_id is None:
            raise ProtocolError(
                f"wandb: run {ref.id} has no storage id to stop it by: {excerpt(dict(run))}"
            )
        response = yield self._graphql(STOP_RUN_MUTATION, {"id": storage_id}, "StopRun")
        result = self._data(response).get("stopRun")
        if not (isinstance(result, Mapping) and result.get("success")):
            raise Conflict(
                f"W&B did not stop run {ref.scope['entity']}/{ref.scope['project']}/{ref.id} "
                f"(stopRun answered {result!r})",
                platform=self.name,
                status_code=response.status_code,
                body=response.text[:500],
            )
        return None

    def _delete_item(self, ref: RunRef) -> Exchange[None]:
        s = ref.scope
        variables = {
            "projectName": s["queue_project"],
            "entityName": s.get("queue_entity") or s["entity"],
            "runQueue": s["queue"],
        }
        response = yield self._graphql(QUEUE_ID_QUERY, variables, "RunbridgeRunQueue")
        project = self._data(response).get("project")
        queue_id = ident(mapping(mapping(project).get("runQueue")).get("id"))
        if queue_id is None:
            raise self._not_found(response, f"no run queue {s['queue']!r} to delete item from")
        response = yield self._graphql(
            DELETE_ITEM_MUTATION,
            {"queueID": queue_id, "runQueueItemId": ref.id},
            "RunbridgeDeleteFromRunQueue",
        )
        result = self._data(response).get("deleteFromRunQueue")
        if not (isinstance(result, Mapping) and result.get("success")):
            raise Conflict(
                f"W&B did not delete queue item {ref.id} (deleteFromRunQueue answered "
                f"{result!r}); an agent may have taken it",
                platform=self.name,
                status_code=response.status_code,
                body=response.text[:500],
            )
        return None
