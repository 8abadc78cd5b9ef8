"""An emulator of the Weights & Biases GraphQL API, for the parts runbridge and ``wandb.Api`` use.

One route, ``POST /graphql``, answers GraphQL documents the way the W&B server does for the
queries and mutations that the ``wandb`` package (0.31.0) and runbridge send; see
docs/platforms/wandb.md for what is verified and what is assumed. It is a small GraphQL
engine, not a table of canned answers: documents are parsed and checked against a schema
written from the SDK's own documents (field names, arguments, payload types), so a query for
a field the SDK never uses fails with ``Cannot query field "x" on type "T".`` as a GraphQL
server would, and the answer has exactly the fields asked for, under their aliases.

Supported root fields::

    query     viewer, project(name, entityName) { run(name), runQueue(name) { runQueueItem(id),
              runQueueItems(first) { edges { node } } }, runQueues }
    mutation  upsertBucket, updateRunState, stopRun, pushToRunQueueByName, pushToRunQueue,
              deleteFromRunQueue

Runs follow :class:`~runbridge.testing.Script` steps of raw W&B states (``pending``,
``running``, ``preempting``, ``preempted``...) and end in ``final`` (``finished``, ``failed``,
``crashed``, ``killed``, ``preempted``); ``Script.outputs`` is the run summary once it runs.
A run can also be made directly (:meth:`WandBEmulator.add_run`, the sensor case) or by the
SDK's ``Run.create`` (``upsertBucket``).

W&B Launch: ``pushToRunQueueByName`` puts an item (state ``PENDING``) on a queue; ``pickup``
seconds later an emulated launch agent claims it (``CLAIMED``, ``associatedRunId`` set to the
spec's ``run_id`` or a new id) and the run starts in the spec's entity/project, following the
next queued script. A queue item shows ``id``, ``state``, ``associatedRunId`` and the
``runSpec`` it was pushed with (a JSON string). A script with ``final="FAILED"`` and no steps
makes the agent fail the item instead (``FAILED``, no run). ``stopRun`` marks the run
``stopped`` and ends it ``killed``; ``deleteFromRunQueue`` removes an item that no agent
claimed yet.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._control import route
from ._emulator import EmulatedRun, Emulator, RecordedRequest, Script

__all__ = [
    "DEFAULT_ENTITY",
    "DEFAULT_PROJECT",
    "SCHEMA",
    "GraphQLError",
    "QueueItem",
    "RunQueue",
    "WandBEmulator",
    "execute",
]

DEFAULT_ENTITY = "runbridge"
DEFAULT_PROJECT = "demo"
LAUNCH_DEFAULT_PROJECT = "model-registry"
ENDED = frozenset({"finished", "failed", "crashed", "killed"})

# -- a small GraphQL engine ---------------------------------------------------------------------

FieldDef = tuple[str, tuple[str, ...]]
"""(type, argument names) of a field; a type is ``Name``, ``[Name]``, with ``!`` ignored."""

SCALARS = frozenset({"String", "ID", "Int", "Float", "Boolean", "JSONString", "JSON", "DateTime"})


def _f(kind: str, *args: str) -> FieldDef:
    return (kind, args)


SCHEMA: dict[str, dict[str, FieldDef]] = {
    "Query": {"viewer": _f("User"), "project": _f("Project", "name", "entityName")},
    "Mutation": {
        "upsertBucket": _f("UpsertBucketPayload", "input"),
        "updateRunState": _f("UpdateRunStatePayload", "input"),
        "stopRun": _f("StopRunPayload", "input"),
        "pushToRunQueueByName": _f("PushToRunQueueByNamePayload", "input"),
        "pushToRunQueue": _f("PushToRunQueuePayload", "input"),
        "deleteFromRunQueue": _f("DeleteFromRunQueuePayload", "input"),
    },
    "User": {
        "id": _f("ID"),
        "name": _f("String"),
        "entity": _f("String"),
        "username": _f("String"),
        "email": _f("String"),
        "flags": _f("JSONString"),
        "teams": _f("EntityConnection"),
    },
    "EntityConnection": {"edges": _f("[EntityEdge]")},
    "EntityEdge": {"node": _f("Entity")},
    "Entity": {"id": _f("ID"), "name": _f("String")},
    "Project": {
        "id": _f("ID"),
        "name": _f("String"),
        "entityName": _f("String"),
        "internalId": _f("ID"),
        "readOnly": _f("Boolean"),
        "entity": _f("Entity"),
        "run": _f("Run", "name"),
        "runQueue": _f("RunQueue", "name"),
        "runQueues": _f("[RunQueue]"),
    },
    "Run": {
        "id": _f("ID"),
        "name": _f("String"),
        "displayName": _f("String"),
        "state": _f("String"),
        "config": _f("JSONString"),
        "summaryMetrics": _f("JSONString"),
        "systemMetrics": _f("JSONString"),
        "createdAt": _f("DateTime"),
        "heartbeatAt": _f("DateTime"),
        "tags": _f("[String]"),
        "sweepName": _f("String"),
        "group": _f("String"),
        "jobType": _f("String"),
        "commit": _f("String"),
        "readOnly": _f("Boolean"),
        "description": _f("String"),
        "notes": _f("String"),
        "historyLineCount": _f("Int"),
        "user": _f("User"),
        "historyKeys": _f("JSON"),
        "projectId": _f("Int"),
        "stopped": _f("Boolean"),
        "project": _f("Project"),
    },
    "RunQueue": {
        "id": _f("ID"),
        "name": _f("String"),
        "createdBy": _f("String"),
        "access": _f("String"),
        "runQueueItem": _f("RunQueueItem", "id"),
        "runQueueItems": _f("RunQueueItemConnection", "first"),
    },
    "RunQueueItemConnection": {"edges": _f("[RunQueueItemEdge]")},
    "RunQueueItemEdge": {"node": _f("RunQueueItem")},
    "RunQueueItem": {
        "id": _f("ID"),
        "state": _f("String"),
        "associatedRunId": _f("String"),
        "runSpec": _f("JSONString"),
    },
    "UpsertBucketPayload": {
        "bucket": _f("Run"),
        "inserted": _f("Boolean"),
        "clientMutationId": _f("String"),
    },
    "UpdateRunStatePayload": {"success": _f("Boolean"), "clientMutationId": _f("String")},
    "StopRunPayload": {"success": _f("Boolean"), "clientMutationId": _f("String")},
    "PushToRunQueueByNamePayload": {"runQueueItemId": _f("ID"), "runSpec": _f("JSONString")},
    "PushToRunQueuePayload": {"runQueueItemId": _f("ID")},
    "DeleteFromRunQueuePayload": {"success": _f("Boolean"), "clientMutationId": _f("String")},
}
"""Types and fields, from the documents in the ``wandb`` package (type names are the server's
where the SDK quotes them, e.g. ``PushToRunQueueByNamePayload``; others are assumed)."""


class GraphQLError(Exception):
    """An error for the ``errors`` list of a GraphQL answer."""

    def __init__(self, message: str, path: list[str | int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.path is not None:
            out["path"] = self.path
        return out


@dataclasses.dataclass
class _Var:
    name: str


@dataclasses.dataclass
class _Enum:
    value: str


@dataclasses.dataclass
class _Field:
    name: str
    alias: str | None
    args: dict[str, Any]
    selections: list[Any] | None


@dataclasses.dataclass
class _Spread:
    name: str


@dataclasses.dataclass
class _Inline:
    type_condition: str | None
    selections: list[Any]


@dataclasses.dataclass
class _Operation:
    kind: str
    name: str | None
    variables: dict[str, tuple[str, Any]]
    selections: list[Any]


_TOKENS = re.compile(
    r'''
      (?P<skip>[\s,\ufeff]+|\#[^\n\r]*)
    | (?P<spread>\.\.\.)
    | (?P<punct>[!$&():=@\[\]{}|])
    | (?P<block>"""(?:\\"""|[^"]|"(?!""))*""")
    | (?P<string>"(?:\\.|[^"\\\n])*")
    | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
    ''',
    re.VERBOSE,
)


class _Parser:
    """Recursive descent over the executable part of the GraphQL grammar."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            match = _TOKENS.match(text, pos)
            if match is None:
                raise GraphQLError(f"Syntax Error: Unexpected character {text[pos]!r}.")
            if match.lastgroup != "skip":
                self.tokens.append((match.lastgroup or "", match.group()))
            pos = match.end()
        self.at = 0

    def peek(self, value: str | None = None) -> bool:
        if self.at >= len(self.tokens):
            return False
        return value is None or self.tokens[self.at][1] == value

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.at >= len(self.tokens):
            raise GraphQLError("Syntax Error: Unexpected <EOF>.")
        got_kind, got = self.tokens[self.at]
        if (kind and got_kind != kind) or (value is not None and got != value):
            want = repr(value) if value is not None else kind
            raise GraphQLError(f"Syntax Error: Expected {want}, found {got!r}.")
        self.at += 1
        return got

    def document(self) -> tuple[list[_Operation], dict[str, tuple[str, list[Any]]]]:
        operations: list[_Operation] = []
        fragments: dict[str, tuple[str, list[Any]]] = {}
        while self.at < len(self.tokens):
            if self.peek("{"):
                operations.append(_Operation("query", None, {}, self.selection_set()))
            elif self.peek("fragment"):
                self.take()
                name = self.take("name")
                self.take("name", "on")
                type_condition = self.take("name")
                self.directives()
                fragments[name] = (type_condition, self.selection_set())
            else:
                kind = self.take("name")
                if kind not in ("query", "mutation", "subscription"):
                    raise GraphQLError(f"Syntax Error: Unexpected Name {kind!r}.")
                op_name = (
                    self.take("name")
                    if self.at < len(self.tokens) and self.tokens[self.at][0] == "name"
                    else None
                )
                variables = self.variable_definitions() if self.peek("(") else {}
                self.directives()
                operations.append(_Operation(kind, op_name, variables, self.selection_set()))
        if not operations:
            raise GraphQLError("Syntax Error: Unexpected <EOF>.")
        return operations, fragments

    def variable_definitions(self) -> dict[str, tuple[str, Any]]:
        out: dict[str, tuple[str, Any]] = {}
        self.take(value="(")
        while not self.peek(")"):
            self.take(value="$")
            name = self.take("name")
            self.take(value=":")
            kind = self.type_ref()
            default = self.value(const=True) if self.peek("=") and self.take() else None
            self.directives()
            out[name] = (kind, default)
        self.take(value=")")
        return out

    def type_ref(self) -> str:
        if self.peek("["):
            self.take()
            inner = self.type_ref()
            self.take(value="]")
            text = f"[{inner}]"
        else:
            text = self.take("name")
        if self.peek("!"):
            self.take()
            text += "!"
        return text

    def directives(self) -> None:
        while self.peek("@"):
            self.take()
            self.take("name")
            if self.peek("("):
                self.arguments()

    def selection_set(self) -> list[Any]:
        self.take(value="{")
        selections: list[Any] = []
        while not self.peek("}"):
            if self.peek("..."):
                self.take()
                if self.peek("on"):
                    self.take()
                    type_condition: str | None = self.take("name")
                    self.directives()
                    selections.append(_Inline(type_condition, self.selection_set()))
                elif self.peek("{") or self.peek("@"):
                    self.directives()
                    selections.append(_Inline(None, self.selection_set()))
                else:
                    selections.append(_Spread(self.take("name")))
                    self.directives()
                continue
            name = self.take("name")
            alias = None
            if self.peek(":"):
                self.take()
                alias, name = name, self.take("name")
            args = self.arguments() if self.peek("(") else {}
            self.directives()
            sub = self.selection_set() if self.peek("{") else None
            selections.append(_Field(name, alias, args, sub))
        self.take(value="}")
        if not selections:
            raise GraphQLError("Syntax Error: Expected Name, found '}'.")
        return selections

    def arguments(self) -> dict[str, Any]:
        self.take(value="(")
        out: dict[str, Any] = {}
        while not self.peek(")"):
            name = self.take("name")
            self.take(value=":")
            out[name] = self.value()
        self.take(value=")")
        return out

    def value(self, const: bool = False) -> Any:
        if self.at >= len(self.tokens):
            raise GraphQLError("Syntax Error: Unexpected <EOF>.")
        kind, token = self.tokens[self.at]
        if token == "$" and not const:
            self.take()
            return _Var(self.take("name"))
        if token == "[":
            self.take()
            items = []
            while not self.peek("]"):
                items.append(self.value(const))
            self.take()
            return items
        if token == "{":
            self.take()
            fields: dict[str, Any] = {}
            while not self.peek("}"):
                name = self.take("name")
                self.take(value=":")
                fields[name] = self.value(const)
            self.take()
            return fields
        self.take()
        if kind == "number":
            return float(token) if any(c in token for c in ".eE") else int(token)
        if kind == "string":
            return json.loads(token)
        if kind == "block":
            return token[3:-3].replace('\\"""', '"""')
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(token, _Enum(token))
        raise GraphQLError(f"Syntax Error: Unexpected {token!r}.")


def _base(kind: str) -> str:
    return kind.replace("!", "").strip("[]")


def _is_list(kind: str) -> bool:
    return kind.replace("!", "").startswith("[")


class _Execution:
    def __init__(
        self,
        schema: Mapping[str, Mapping[str, FieldDef]],
        fragments: Mapping[str, tuple[str, list[Any]]],
        variables: Mapping[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.errors: list[GraphQLError] = []
        self.used: set[str] = set()

    def collect(self, selections: list[Any], type_name: str, seen: frozenset[str]) -> list[_Field]:
        out: list[_Field] = []
        for selection in selections:
            if isinstance(selection, _Field):
                out.append(selection)
            elif isinstance(selection, _Inline):
                if selection.type_condition in (None, type_name):
                    out.extend(self.collect(selection.selections, type_name, seen))
            else:
                if selection.name not in self.fragments:
                    raise GraphQLError(f'Unknown fragment "{selection.name}".')
                if selection.name in seen:
                    raise GraphQLError(f'Cannot spread fragment "{selection.name}" within itself.')
                condition, fragment = self.fragments[selection.name]
                if condition not in self.schema:
                    raise GraphQLError(f'Unknown type "{condition}".')
                if condition == type_name:
                    out.extend(self.collect(fragment, type_name, seen | {selection.name}))
        return out

    def validate(self, selections: list[Any], type_name: str) -> None:
        fields = self.schema[type_name]
        for field in self.collect(selections, type_name, frozenset()):
            if field.name == "__typename":
                continue
            if field.name not in fields:
                raise GraphQLError(f'Cannot query field "{field.name}" on type "{type_name}".')
            kind, arg_names = fields[field.name]
            for arg, value in field.args.items():
                if arg not in arg_names:
                    raise GraphQLError(
                        f'Unknown argument "{arg}" on field "{type_name}.{field.name}".'
                    )
                self._note_variables(value)
            base = _base(kind)
            if base in SCALARS:
                if field.selections is not None:
                    raise GraphQLError(
                        f'Field "{field.name}" must not have a selection since type "{kind}" '
                        "has no subfields."
                    )
            elif field.selections is None:
                raise GraphQLError(
                    f'Field "{field.name}" of type "{kind}" must have a selection of subfields. '
                    f'Did you mean "{field.name} {{ ... }}"?'
                )
            else:
                self.validate(field.selections, base)

    def _note_variables(self, value: Any) -> None:
        if isinstance(value, _Var):
            self.used.add(value.name)
        elif isinstance(value, list):
            for item in value:
                self._note_variables(item)
        elif isinstance(value, dict):
            for item in value.values():
                self._note_variables(item)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, _Var):
            return self.variables.get(value.name)
        if isinstance(value, _Enum):
            return value.value
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        return value

    def complete(
        self, value: Any, kind: str, selections: list[Any] | None, path: list[str | int]
    ) -> Any:
        if value is None:
            return None
        if _is_list(kind):
            inner = kind.replace("!", "")[1:-1]
            return [
                self.complete(item, inner, selections, [*path, index])
                for index, item in enumerate(value)
            ]
        base = _base(kind)
        if base in SCALARS:
            return value
        assert selections is not None
        out: dict[str, Any] = {}
        for field in self.collect(selections, base, frozenset()):
            key = field.alias or field.name
            if field.name == "__typename":
                out[key] = base
                continue
            field_kind = self.schema[base][field.name][0]
            raw = value.get(field.name) if isinstance(value, Mapping) else None
            try:
                if callable(raw):
                    raw = raw(self.resolve(field.args))
                out[key] = self.complete(raw, field_kind, field.selections, [*path, key])
            except GraphQLError as exc:
                exc.path = exc.path or [*path, key]
                self.errors.append(exc)
                out[key] = None
        return out


def execute(
    document: str,
    variables: Mapping[str, Any] | None,
    operation_name: str | None,
    roots: Mapping[str, Mapping[str, Any]],
    schema: Mapping[str, Mapping[str, FieldDef]] = SCHEMA,
) -> tuple[dict[str, Any], str, list[str]]:
    """Run one GraphQL request: (the JSON answer, the operation type, its root fields).

    ``roots`` maps ``"query"``/``"mutation"`` to the root object: field name -> value or
    ``callable(args)``; nested objects are mappings of the same kind.
    """
    try:
        operations, fragments = _Parser(document).document()
        if operation_name:
            chosen = [op for op in operations if op.name == operation_name]
            if not chosen:
                raise GraphQLError(f'Unknown operation named "{operation_name}".')
            operation = chosen[0]
        elif len(operations) == 1:
            operation = operations[0]
        else:
            raise GraphQLError("Must provide operation name if query contains multiple operations.")
        if operation.kind == "subscription":
            raise GraphQLError("Subscriptions are not supported.")
        root_type = "Query" if operation.kind == "query" else "Mutation"
        given = dict(variables or {})
        for name, (kind, default) in operation.variables.items():
            if name not in given and default is not None:
                given[name] = default
            if kind.endswith("!") and given.get(name) is None:
                raise GraphQLError(
                    f'Variable "${name}" of required type "{kind}" was not provided.'
                )
        run = _Execution(schema, fragments, given)
        run.validate(operation.selections, root_type)
        for name in sorted(run.used - set(operation.variables)):
            raise GraphQLError(f'Variable "${name}" is not defined.')
    except GraphQLError as exc:
        return {"errors": [exc.to_dict()]}, "invalid", []
    root_fields = [f.name for f in run.collect(operation.selections, root_type, frozenset())]
    data = run.complete(roots.get(operation.kind, {}), root_type, operation.selections, [])
    answer: dict[str, Any] = {"data": data}
    if run.errors:
        answer["errors"] = [error.to_dict() for error in run.errors]
    return answer, operation.kind, root_fields


# -- the emulated platform ------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


@dataclasses.dataclass
class QueueItem:
    """One launch on a run queue."""

    id: str
    spec: dict[str, Any]
    script: Script
    pushed: float
    priority: int | None = None
    template_variables: dict[str, Any] | None = None
    state: str = "PENDING"
    run_id: str | None = None


@dataclasses.dataclass
class RunQueue:
    id: str
    entity: str
    project: str
    name: str
    items: dict[str, QueueItem] = dataclasses.field(default_factory=dict)


def _graphql(pattern: str) -> Any:
    """A fault target: ``POST /graphql`` requests whose document matches ``pattern``."""
    compiled = re.compile(pattern)
    post = route("POST", r"^/graphql$")

    def matches(request: RecordedRequest) -> bool:
        body = request.body
        query = body.get("query") if isinstance(body, dict) else None
        return post(request) and isinstance(query, str) and compiled.search(query) is not None

    return matches


class WandBEmulator(Emulator):
    """The W&B GraphQL API on loopback. See the module docs.

    ``entity`` is the viewer's default entity; ``queues`` are created in its
    ``model-registry`` project; ``pickup`` is how long a pushed item waits for the emulated
    agent; ``legacy_push=True`` emulates a server whose push payload has no ``runSpec`` field,
    ``item_spec=False`` one whose queue items show none (see docs/platforms/wandb.md, §6).
    """

    platform = "wandb"
    default_script = Script(
        [("pending", 0.2), ("running", 1.0)],
        final="finished",
        outputs={"val_loss": 0.12, "accuracy": 0.93, "epoch": 10},
    )
    # the control API's script words and fault targets. A W&B run has no error message: a
    # failed or crashed run's Script.message is its summary's "error" (see _run_view).
    script_words = {
        "queued": "pending",
        "running": "running",
        "success": "finished",
        "failed": "failed",
        "cancelled": "killed",
        "unknown": "paused",
    }
    raw_states = frozenset(
        {"pending", "running", "preempting", "preempted", "finished", "failed", "crashed"}
        | {"killed", "FAILED"}
    )
    fault_targets = {
        "launch": _graphql(r"\bpushToRunQueue(ByName)?\b"),
        "status": _graphql(r"^(?![\s\S]*\bmutation\b)[\s\S]*\b(run|runQueue)\s*\("),
        "cancel": _graphql(r"\b(stopRun|deleteFromRunQueue)\b"),
    }

    def __init__(
        self,
        *,
        entity: str = DEFAULT_ENTITY,
        queues: Iterable[str] = ("default",),
        pickup: float = 0.2,
        legacy_push: bool = False,
        item_spec: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.entity = entity
        self.pickup = pickup
        self.projects: dict[tuple[str, str], int] = {}
        self.queues: dict[tuple[str, str, str], RunQueue] = {}
        self.graphql: list[tuple[str, list[str]]] = []
        """(operation type, root fields) of every GraphQL request, in order."""
        self.stops: list[str] = []
        """Paths of the runs that ``stopRun`` was sent for."""
        self._ids = itertools.count(1)
        self._wall0 = datetime.now(timezone.utc)
        self._mono0 = self.now()
        self.schema: dict[str, dict[str, FieldDef]] = {k: dict(v) for k, v in SCHEMA.items()}
        if legacy_push:
            del self.schema["PushToRunQueueByNamePayload"]["runSpec"]
        if not item_spec:
            del self.schema["RunQueueItem"]["runSpec"]
        for name in queues:
            self.add_queue(name)

    # -- setting the scene ----------------------------------------------------------------------
    def project_id(self, entity: str, project: str) -> int:
        with self.lock:
            key = (entity, project)
            if key not in self.projects:
                self.projects[key] = next(self._ids)
            return self.projects[key]

    def add_queue(
        self, name: str, *, entity: str | None = None, project: str = LAUNCH_DEFAULT_PROJECT
    ) -> RunQueue:
        entity = entity or self.entity
        with self.lock:
            self.project_id(entity, project)
            queue = RunQueue(_b64(f"RunQueue:v1:{next(self._ids)}"), entity, project, name)
            self.queues[(entity, project, name)] = queue
        return queue

    def add_run(
        self,
        script: Script | None = None,
        run_id: str | None = None,
        *,
        entity: str | None = None,
        project: str = DEFAULT_PROJECT,
        state: str | None = None,
        summary: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        display_name: str | None = None,
        started: float | None = None,
        **data: Any,
    ) -> EmulatedRun:
        """Create a run as if logged elsewhere; its ``id`` is the path ``entity/project/name``.

        ``state`` pins the raw state (no script); ``summary`` replaces the script's outputs.
        """
        entity = entity or self.entity
        name = run_id or _new_run_id()
        path = f"{entity}/{project}/{name}"
        fields: dict[str, Any] = {
            "entity": entity,
            "project": project,
            "name": name,
            "storage_id": _b64(f"Run:v1:{name}:{project}:{entity}"),
            "display_name": display_name or f"{name}-run",
            "config": dict(config or {}),
            **data,
        }
        if state is not None:
            fields["state"] = state
        if summary is not None:
            fields["summary"] = dict(summary)
        run = EmulatedRun(
            path,
            script or (self.default_script if state is not None else self.next_script()),
            self.now() if started is None else started,
            fields,
        )
        with self.lock:
            self.project_id(entity, project)
            self.runs[path] = run
        return run

    def run(self, entity: str, project: str, name: str) -> EmulatedRun | None:
        return self.runs.get(f"{entity}/{project}/{name}")

    # -- the control API's hooks ---------------------------------------------------------------
    def run_view(self, run: EmulatedRun, now: float) -> tuple[str, bool]:
        state = self.run_state(run, now)
        return state, state in ENDED or state == "preempted"

    def refresh(self, now: float) -> None:
        self._advance(now)

    def run_key(self, run: EmulatedRun) -> str | None:
        """The run id the launch chose (``run_id`` in the run spec), if it chose one."""
        for queue in self.queues.values():
            item = queue.items.get(str(run.data.get("queue_item")))
            if item is not None and item.spec.get("run_id"):
                return str(item.spec["run_id"])
        return None

    def user_cancel(self, run: EmulatedRun) -> str | None:
        """Stop the run in the W&B UI: as ``stopRun``, not counted as runbridge's cancel."""
        state = self.run_state(run)
        if state in ENDED:
            return f"run {run.id} already finished ({state})"
        run.data["stopped"] = True
        run.data.pop("state", None)
        run.cancelled, run.cancelled_at = "killed", self.now()
        return None

    # -- state ----------------------------------------------------------------------------------
    def run_state(self, run: EmulatedRun, now: float | None = None) -> str:
        now = self.now() if now is None else now
        if run.cancelled is not None:
            return run.cancelled
        if "state" in run.data:
            return str(run.data["state"])
        return run.script.state_at(now - run.started)[0]

    def _time(self, mono: float) -> str:
        moment = self._wall0 + timedelta(seconds=mono - self._mono0)
        return moment.strftime("%Y-%m-%dT%H:%M:%S")

    def _advance(self, now: float) -> None:
        """The emulated launch agent: claim the items whose pickup time has come."""
        for queue in self.queues.values():
            for item in queue.items.values():
                if item.state != "PENDING" or now < item.pushed + self.pickup:
                    continue
                if item.script.final == "FAILED" and not item.script.steps:
                    item.state = "FAILED"
                    continue
                entity = str(item.spec.get("entity") or queue.entity)
                project = str(item.spec.get("project") or DEFAULT_PROJECT)
                run_id = str(item.spec.get("run_id") or _new_run_id())
                if self.run(entity, project, run_id) is None:
                    self.add_run(
                        item.script,
                        run_id,
                        entity=entity,
                        project=project,
                        started=item.pushed + self.pickup,
                        display_name=item.spec.get("name"),
                        config=(item.spec.get("overrides") or {}).get("run_config"),
                        queue_item=item.id,
                    )
                item.state, item.run_id = "CLAIMED", run_id

    # -- views: what the GraphQL answers are made of ----------------------------------------------
    def _viewer(self) -> dict[str, Any]:
        return {
            "id": _b64(f"User:{self.entity}"),
            "name": self.entity,
            "entity": self.entity,
            "username": self.entity,
            "email": f"{self.entity}@example.com",
            "flags": None,
            "teams": {"edges": []},
        }

    def _project(self, entity: str | None, name: str | None) -> dict[str, Any] | None:
        entity = entity or self.entity
        if name is None or (entity, name) not in self.projects:
            return None
        project_id = self.projects[(entity, name)]

        def run(args: Mapping[str, Any]) -> dict[str, Any] | None:
            found = self.run(entity, name, str(args.get("name")))
            return self._run_view(found) if found is not None else None

        def run_queue(args: Mapping[str, Any]) -> dict[str, Any] | None:
            queue = self.queues.get((entity, name, str(args.get("name"))))
            return self._queue_view(queue) if queue is not None else None

        return {
            "id": _b64(f"Project:v1:{name}:{entity}"),
            "name": name,
            "entityName": entity,
            "internalId": str(project_id),
            "readOnly": False,
            "entity": {"id": _b64(f"Entity:{entity}"), "name": entity},
            "run": run,
            "runQueue": run_queue,
            "runQueues": [
                self._queue_view(q)
                for (e, p, _), q in sorted(self.queues.items())
                if (e, p) == (entity, name)
            ],
        }

    def _run_view(self, run: EmulatedRun) -> dict[str, Any]:
        now = self.now()
        data = run.data
        state = self.run_state(run, now)
        if "summary" in data:
            summary = data["summary"]
        else:
            summary = dict(run.script.outputs or {}) if state != "pending" else {}
            if state in ("failed", "crashed") and run.cancelled is None and run.script.message:
                summary["error"] = run.script.message
        end = run.finished_at(now) if "state" not in data else None
        heartbeat = min(now, end) if end is not None else now
        entity, project = data["entity"], data["project"]
        return {
            "id": data["storage_id"],
            "name": data["name"],
            "displayName": data["display_name"],
            "state": state,
            "config": json.dumps(
                {key: {"value": value, "desc": None} for key, value in data["config"].items()}
            ),
            "summaryMetrics": json.dumps(summary),
            "systemMetrics": "{}",
            "createdAt": self._time(run.started),
            "heartbeatAt": self._time(heartbeat),
            "tags": list(data.get("tags", [])),
            "sweepName": None,
            "group": None,
            "jobType": None,
            "commit": None,
            "readOnly": False,
            "description": None,
            "notes": data.get("notes"),
            "historyLineCount": 0,
            "user": {"name": self.entity, "username": self.entity},
            "historyKeys": {"keys": {}, "lastStep": 0},
            "projectId": self.projects.get((entity, project), 0),
            "stopped": bool(data.get("stopped")),
            "project": lambda args: self._project(entity, project),
        }

    def _queue_view(self, queue: RunQueue) -> dict[str, Any]:
        def item(args: Mapping[str, Any]) -> dict[str, Any] | None:
            found = queue.items.get(str(args.get("id")))
            return self._item_view(found) if found is not None else None

        def items(args: Mapping[str, Any]) -> dict[str, Any]:
            # oldest first; ``first: N`` (RunQueue._get_items asks for 100) keeps N of them
            listed = list(queue.items.values())
            first = args.get("first")
            if isinstance(first, int) and not isinstance(first, bool):
                listed = listed[: max(first, 0)]
            return {"edges": [{"node": self._item_view(i)} for i in listed]}

        return {
            "id": queue.id,
            "name": queue.name,
            "createdBy": self.entity,
            "access": "PROJECT",
            "runQueueItem": item,
            "runQueueItems": items,
        }

    @staticmethod
    def _item_view(item: QueueItem) -> dict[str, Any]:
        return {
            "id": item.id,
            "state": item.state,
            "associatedRunId": item.run_id,
            "runSpec": json.dumps(item.spec),
        }

    # -- mutations --------------------------------------------------------------------------------
    def _run_by_storage_id(self, storage_id: Any) -> EmulatedRun:
        for run in self.runs.values():
            if run.data.get("storage_id") == storage_id:
                return run
        raise GraphQLError(f"run {storage_id} not found")

    def _upsert_bucket(self, args: Mapping[str, Any]) -> dict[str, Any]:
        given = dict(args.get("input") or {})
        if given.get("id") and not given.get("name"):
            run = self._run_by_storage_id(given["id"])
            inserted = False
        else:
            entity = given.get("entityName") or self.entity
            project = given.get("modelName") or "uncategorized"
            name = given.get("name") or _new_run_id()
            found = self.run(entity, project, name)
            inserted = found is None
            run = found or self.add_run(
                run_id=name, entity=entity, project=project, state=given.get("state") or "running"
            )
            if not inserted and given.get("state"):
                run.data["state"] = given["state"]
        for field, key in (("displayName", "display_name"), ("notes", "notes"), ("tags", "tags")):
            if given.get(field) is not None:
                run.data[key] = given[field]
        if given.get("config"):
            config = json.loads(given["config"])
            run.data["config"] = {
                k: v.get("value") if isinstance(v, dict) else v for k, v in config.items()
            }
        return {"bucket": self._run_view(run), "inserted": inserted, "clientMutationId": None}

    def _update_run_state(self, args: Mapping[str, Any]) -> dict[str, Any]:
        given = dict(args.get("input") or {})
        run = self._run_by_storage_id(given.get("id"))
        current, target = self.run_state(run), given.get("state")
        allowed = {
            "pending": {"running", "failed", "crashed", "preempted"},
            "failed": {"pending", "running"},
        }
        if current not in allowed.get(str(target), set()):
            return {"success": False, "clientMutationId": None}
        run.cancelled = run.cancelled_at = None
        run.data["state"] = target
        return {"success": True, "clientMutationId": None}

    def _stop_run(self, args: Mapping[str, Any]) -> dict[str, Any]:
        run = self._run_by_storage_id((args.get("input") or {}).get("id"))
        run.data["stopped"] = True
        self.stops.append(run.id)
        if self.run_state(run) not in ENDED:
            run.data.pop("state", None)
            run.cancelled, run.cancelled_at = "killed", self.now()
            self.cancels.append(run.id)
        return {"success": True, "clientMutationId": None}

    def _push(self, queue: RunQueue, given: Mapping[str, Any]) -> dict[str, Any]:
        try:
            spec = json.loads(given.get("runSpec") or "")
        except ValueError:
            raise GraphQLError("runSpec is not valid JSON") from None
        if not isinstance(spec, dict):
            raise GraphQLError("runSpec must be a JSON object")
        template = given.get("templateVariableValues")
        item = QueueItem(
            _b64(f"RunQueueItem:v1:{next(self._ids)}"),
            spec,
            self.next_script(),
            self.now(),
            given.get("priority"),
            json.loads(template) if template else None,
        )
        queue.items[item.id] = item
        self.launches.append(spec)
        return {"runQueueItemId": item.id, "runSpec": json.dumps(spec)}

    def _push_by_name(self, args: Mapping[str, Any]) -> dict[str, Any]:
        given = dict(args.get("input") or {})
        key = (
            given.get("entityName") or self.entity,
            given.get("projectName") or LAUNCH_DEFAULT_PROJECT,
            str(given.get("queueName")),
        )
        queue = self.queues.get(key)
        if queue is None:
            raise GraphQLError(f"run queue {key[2]} not found in {key[0]}/{key[1]}")
        return self._push(queue, given)

    def _queue_by_id(self, queue_id: Any) -> RunQueue:
        for queue in self.queues.values():
            if queue.id == queue_id:
                return queue
        raise GraphQLError(f"run queue {queue_id} not found")

    def _push_by_id(self, args: Mapping[str, Any]) -> dict[str, Any]:
        given = dict(args.get("input") or {})
        return self._push(self._queue_by_id(given.get("queueID")), given)

    def _delete_item(self, args: Mapping[str, Any]) -> dict[str, Any]:
        given = dict(args.get("input") or {})
        queue = self._queue_by_id(given.get("queueID"))
        item = queue.items.get(str(given.get("runQueueItemId")))
        if item is None or item.state != "PENDING":
            return {"success": False, "clientMutationId": None}
        del queue.items[item.id]
        self.cancels.append(item.id)
        return {"success": True, "clientMutationId": None}

    def _roots(self) -> dict[str, dict[str, Any]]:
        return {
            "query": {
                "viewer": lambda args: self._viewer(),
                "project": lambda args: self._project(args.get("entityName"), args.get("name")),
            },
            "mutation": {
                "upsertBucket": self._upsert_bucket,
                "updateRunState": self._update_run_state,
                "stopRun": self._stop_run,
                "pushToRunQueueByName": self._push_by_name,
                "pushToRunQueue": self._push_by_id,
                "deleteFromRunQueue": self._delete_item,
            },
        }

    # -- HTTP ---------------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> JSONResponse | None:
        if not self.token:
            return None
        header = request.headers.get("authorization", "")
        if not header:
            return JSONResponse({"errors": [{"message": "user is not logged in"}]}, 401)
        if header != "Basic " + _b64(f"api:{self.token}"):
            return JSONResponse({"errors": [{"message": "permission denied"}]}, 401)
        return None

    def routes(self) -> list[BaseRoute]:
        return [Route("/graphql", self.graphql_endpoint, methods=["POST"])]

    async def graphql_endpoint(self, request: Request) -> Response:
        if (denied := self.check_auth(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"errors": [{"message": "invalid JSON in request body"}]}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return JSONResponse({"errors": [{"message": "must provide query string"}]}, 400)
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            return JSONResponse({"errors": [{"message": "variables must be an object"}]}, 400)
        with self.lock:
            self._advance(self.now())
            answer, kind, fields = execute(
                body["query"],
                variables,
                body.get("operationName") or None,
                self._roots(),
                self.schema,
            )
            self.graphql.append((kind, fields))
        return JSONResponse(answer)

    def calls(self, field: str) -> int:
        """How many GraphQL requests had ``field`` as a root field."""
        with self.lock:
            return sum(field in fields for _, fields in self.graphql)
