"""An emulator of Datature Vi's run API, as the ``vi-sdk`` 0.1.0b7 client speaks it.

Paths, methods, JSON field names and shapes follow docs/platforms/vi.md::

    GET    /workspaces/{org}/runs?s=<size>[&p=<token>]  -> {"items": [Run], "nextPage", "prevPage"}
    GET    /workspaces/{org}/runs/{run_id}              -> Run | 404
    PUT    /workspaces/{org}/runs/{run_id}              -> create (201) with the client's id,
                                                           or replace an existing run (200)
    PATCH  /workspaces/{org}/runs/{run_id}              -> {"spec": {"killedAt"?, "trainingProject"?},
                                                           "metadata"?: {"attributes"}} (kill = killedAt)
    DELETE /workspaces/{org}/runs/{run_id}              -> 204, empty body
    GET    /workspaces/{org}/flows/{flow_id}            -> Flow (add flows with ``add_flow``)
    GET    /_logs/{org}/{run_id}                        -> text/plain: what ``status.log`` points to

A Run document::

    {"kind": "Run", "workspaceId": org, "runId": id,
     "spec": {"flow": FlowSpec, "trainingProject"?, "killedAt"?},
     "status": {"log": "", "observedGeneration": 1,
                "conditions": [{"condition": "Pending", "status": "Reached",
                                "lastTransitionTime": <epoch ms>, "message"?}, ...]},
     "metadata": {"timeCreated", "lastUpdated", "generation", "attributes"},
     "selfLink": "/workspaces/{org}/runs/{id}", "etag": "W/\\"1\\""}

Each run follows a :class:`Script` whose raw states are condition values (Pending, Running, then
Succeeded, Failed, Error or Cancelled; ``"Started/Waiting"``-style values give the SDK's
generic conditions). A condition is appended when the run enters it, so the last one is the
run's state. A kill (``killedAt``) appends ``Cancelled`` after ``kill_delay`` seconds unless the
run ended first. With ``token`` set, requests need ``Authorization: Bearer <token>`` (401)
and an ``Organization-Id`` header equal to the path's organization (403).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ._control import route
from ._emulator import EmulatedRun, Emulator, Script

__all__ = ["DEFAULT_FLOW", "ViEmulator"]

RUN_ID = re.compile(r"^[a-zA-Z0-9_-]{1,255}$")
FLOW_FIELDS = ("name", "schema", "tolerations", "settings", "blocks")
PATCH_SPEC_FIELDS = frozenset({"killedAt", "trainingProject"})
TERMINAL = frozenset({"Succeeded", "Failed", "Error", "Cancelled"})
GENERIC = frozenset({"Started", "Finished", "All"})
DEFAULT_FLOW: dict[str, Any] = {
    "name": "runbridge-emulated-flow",
    "schema": "v1",
    "tolerations": {},
    "settings": {},
    "blocks": [{"block": "train", "settings": {"epochs": 1}, "style": {}}],
}


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _offset(token: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    kind, _, number = text.partition(":")
    return int(number) if kind == "offset" and number.isdigit() else None


def _is_flow(flow: Any) -> bool:
    return isinstance(flow, Mapping) and all(name in flow for name in FLOW_FIELDS)


def _is_attributes(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


class ViEmulator(Emulator):
    """Vi's run API. ``organization_id``: when set, the only organization that exists (others
    answer 404); ``kill_delay``: seconds from a kill to the ``Cancelled`` condition."""

    platform = "vi"
    default_script = Script([("Pending", 0.2), ("Running", 1.0)], final="Succeeded")
    # the control API's script words and fault targets (Script.outputs: a Vi run has none)
    script_words = {
        "queued": "Pending",
        "running": "Running",
        "success": "Succeeded",
        "failed": "Failed",
        "cancelled": "Cancelled",
        "unknown": "Paused",
    }
    raw_states = (
        TERMINAL
        | {"Pending", "Running"}
        | {
            f"{condition}/{status}"
            for condition in ("Started", "Finished")
            for status in ("Waiting", "Reached", "FailedReach")
        }
    )
    fault_targets = {
        "launch": route("PUT", r"^/workspaces/[^/]+/runs/[^/]+$"),
        "status": route("GET", r"^/workspaces/[^/]+/runs/[^/]+$"),
        "cancel": route("PATCH", r"^/workspaces/[^/]+/runs/[^/]+$"),
    }

    def __init__(
        self,
        *,
        organization_id: str | None = None,
        kill_delay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.organization_id = organization_id
        self.kill_delay = kill_delay
        self.flows: dict[tuple[str, str], dict[str, Any]] = {}
        self._wall0_ms = time.time() * 1000
        self._mono0 = self.now()

    # -- time and state ----------------------------------------------------------------------
    def wall_ms(self, mono: float) -> int:
        """Epoch milliseconds of a monotonic instant."""
        return int(self._wall0_ms + (mono - self._mono0) * 1000)

    def add_run(
        self, script: Script | None = None, run_id: str | None = None, **data: Any
    ) -> EmulatedRun:
        """A run as if launched elsewhere. ``data``: ``organization_id`` (default: the
        emulator's, else ``"org-emulator"``), ``flow``, ``training_project``, ``attributes``."""
        org = data.pop("organization_id", None) or self.organization_id or "org-emulator"
        data.setdefault("flow", dict(DEFAULT_FLOW))
        data.setdefault("attributes", {})
        data.setdefault("generation", 1)
        data["organization_id"] = org
        return super().add_run(script, run_id, **data)

    def add_flow(
        self, flow_id: str, spec: Mapping[str, Any] | None = None, *, organization_id: str = ""
    ) -> dict[str, Any]:
        """Make a flow exist (``GET /workspaces/{org}/flows/{flow_id}``); returns its spec."""
        org = organization_id or self.organization_id or "org-emulator"
        flow = dict(spec or DEFAULT_FLOW)
        with self.lock:
            self.flows[(org, flow_id)] = flow
        return flow

    def timeline(self, run: EmulatedRun, now: float) -> list[tuple[str, float]]:
        """The conditions the run has entered by ``now``: (value, monotonic time), in order."""
        kill_at: float | None = run.data.get("kill_at")
        cutoff = now if kill_at is None else min(now, kill_at)
        entered: list[tuple[str, float]] = []
        t = run.started
        for raw, seconds in run.script.steps:
            if t > cutoff:
                break
            entered.append((raw, t))
            t += seconds
        end = run.started + run.script.duration
        if end <= cutoff:
            entered.append((run.script.final, end))
        elif kill_at is not None and kill_at <= now:
            entered.append(("Cancelled", kill_at))
        return entered

    def state(self, run: EmulatedRun, now: float) -> tuple[str, bool]:
        """(latest condition value, ended?)."""
        entered = self.timeline(run, now)
        kill_at: float | None = run.data.get("kill_at")
        cutoff = now if kill_at is None else min(now, kill_at)
        ended = run.started + run.script.duration <= cutoff or (
            kill_at is not None and kill_at <= now
        )
        return (entered[-1][0] if entered else ""), ended

    # -- the control API's hooks ---------------------------------------------------------------
    def run_view(self, run: EmulatedRun, now: float) -> tuple[str, bool]:
        return self.state(run, now)

    def run_key(self, run: EmulatedRun) -> str | None:
        return run.id

    def user_cancel(self, run: EmulatedRun) -> str | None:
        """A kill from Vi's UI: ``killedAt`` now, ``Cancelled`` at once."""
        now = self.now()
        raw, ended = self.state(run, now)
        if ended:
            return f"run {run.id} already finished ({raw})"
        run.data["killed_at"] = self.wall_ms(now)
        run.data["kill_at"] = now
        run.cancelled, run.cancelled_at = "Cancelled", now
        run.data["generation"] += 1
        run.data["modified_at"] = now
        return None

    def document(self, run: EmulatedRun) -> dict[str, Any]:
        """The run's JSON, as ``GET /workspaces/{org}/runs/{id}`` answers it."""
        now = self.now()
        org = run.data["organization_id"]
        conditions: list[dict[str, Any]] = []
        for raw, at in self.timeline(run, now):
            value, _, status = raw.partition("/")
            entry: dict[str, Any] = {
                "condition": value,
                "status": status or "Reached",
                "lastTransitionTime": self.wall_ms(at),
            }
            if value in ("Failed", "Error") or status == "FailedReach":
                if run.script.error_type:
                    entry["reason"] = run.script.error_type
                entry["message"] = run.script.message or f"run {value.lower()}"
            conditions.append(entry)
        latest = conditions[-1] if conditions else None
        started = latest is not None and latest["condition"] not in ("Pending", "Started")
        modified = run.data.get("modified_at", run.started)
        last = max([self.wall_ms(modified)] + [c["lastTransitionTime"] for c in conditions])
        spec: dict[str, Any] = {"flow": run.data["flow"]}
        if run.data.get("training_project") is not None:
            spec["trainingProject"] = run.data["training_project"]
        if run.data.get("killed_at") is not None:
            spec["killedAt"] = run.data["killed_at"]
        generation = run.data["generation"]
        return {
            "kind": "Run",
            "workspaceId": org,
            "runId": run.id,
            "spec": spec,
            "status": {
                "log": f"{self.base_url}/_logs/{org}/{run.id}" if started else "",
                "observedGeneration": generation,
                "conditions": conditions,
            },
            "metadata": {
                "timeCreated": self.wall_ms(run.started),
                "lastUpdated": last,
                "generation": generation,
                "attributes": dict(run.data["attributes"]),
            },
            "selfLink": f"/workspaces/{org}/runs/{run.id}",
            "etag": f'W/"{generation}"',
        }

    # -- the app ---------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        runs = "/workspaces/{org}/runs"
        return [
            Route(runs, self.list_runs, methods=["GET"]),
            Route(runs + "/{run_id}", self.get_run, methods=["GET"]),
            Route(runs + "/{run_id}", self.put_run, methods=["PUT"]),
            Route(runs + "/{run_id}", self.patch_run, methods=["PATCH"]),
            Route(runs + "/{run_id}", self.delete_run, methods=["DELETE"]),
            Route("/workspaces/{org}/flows/{flow_id}", self.get_flow, methods=["GET"]),
            Route("/_logs/{org}/{run_id}", self.logs, methods=["GET"]),
        ]

    def check_auth(self, request: Request) -> JSONResponse | None:
        if not self.token:
            return None
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Unauthorized", "Invalid or missing secret key")
        if request.headers.get("organization-id") != request.path_params.get("org"):
            return _error(403, "Forbidden", "Organization-Id does not match the workspace")
        return None

    def _guard(self, request: Request) -> Response | None:
        if (denied := self.check_auth(request)) is not None:
            return denied
        org = request.path_params["org"]
        if self.organization_id is not None and org != self.organization_id:
            return _error(404, "NotFound", f"Workspace {org} not found")
        return None

    def _find(self, request: Request) -> EmulatedRun | Response:
        if (denied := self._guard(request)) is not None:
            return denied
        run_id = request.path_params["run_id"]
        run = self.runs.get(run_id)
        if run is None or run.data["organization_id"] != request.path_params["org"]:
            return _error(404, "NotFound", f"Run {run_id} not found")
        return run

    async def _body(self, request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    async def list_runs(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        size_text = request.query_params.get("s", "10")
        if not size_text.isdigit() or not 1 <= int(size_text) <= 1000:
            return _error(400, "BadRequest", f"Invalid page size {size_text!r}")
        size = int(size_text)
        token = request.query_params.get("p")
        offset = 0 if token is None else _offset(token)
        if offset is None:
            return _error(400, "BadRequest", "Invalid page token")
        org = request.path_params["org"]
        with self.lock:
            order = {run_id: i for i, run_id in enumerate(self.runs)}
            mine = [r for r in self.runs.values() if r.data["organization_id"] == org]
            mine.sort(key=lambda r: (r.started, order[r.id]), reverse=True)  # newest first
            page = [self.document(r) for r in mine[offset : offset + size]]
        more = offset + size < len(mine)
        return JSONResponse(
            {
                "items": page,
                "nextPage": _token(offset + size) if more else None,
                "prevPage": _token(max(0, offset - size)) if offset else None,
            }
        )

    async def get_run(self, request: Request) -> Response:
        run = self._find(request)
        return run if isinstance(run, Response) else JSONResponse(self.document(run))

    async def put_run(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        org, run_id = request.path_params["org"], request.path_params["run_id"]
        if not RUN_ID.match(run_id):
            return _error(400, "BadRequest", f"Invalid run ID {run_id!r}")
        body = await self._body(request)
        if not isinstance(body, Mapping) or not isinstance(body.get("spec"), Mapping):
            return _error(400, "BadRequest", "Request body must be an object with a spec")
        spec, metadata = body["spec"], body.get("metadata")
        if not _is_flow(spec.get("flow")):
            return _error(
                400, "BadRequest", f"spec.flow must be a flow spec with {', '.join(FLOW_FIELDS)}"
            )
        attributes = (
            (metadata or {}).get("attributes", {}) if isinstance(metadata, Mapping) else None
        )
        if metadata is not None and not _is_attributes(attributes):
            return _error(400, "BadRequest", "metadata.attributes must map strings to strings")
        with self.lock:
            run = self.runs.get(run_id)
            if run is not None and run.data["organization_id"] != org:
                return _error(409, "Conflict", f"Run ID {run_id} is taken")
            if run is None:
                run = self.add_run(
                    self.next_script(),
                    run_id,
                    organization_id=org,
                    flow=dict(spec["flow"]),
                    training_project=spec.get("trainingProject"),
                    attributes=dict(attributes or {}),
                )
                self.launches.append(body)
                return JSONResponse(self.document(run), 201)
            # PUT on an existing id replaces the run's spec (the SDK's runs.replace)
            run.data.update(
                flow=dict(spec["flow"]),
                training_project=spec.get("trainingProject"),
                attributes=dict(attributes or {}),
                generation=run.data["generation"] + 1,
                modified_at=self.now(),
            )
            return JSONResponse(self.document(run), 200)

    async def patch_run(self, request: Request) -> Response:
        run = self._find(request)
        if isinstance(run, Response):
            return run
        body = await self._body(request)
        if not isinstance(body, Mapping):
            return _error(400, "BadRequest", "Request body must be an object")
        extra = sorted(set(body) - {"spec", "metadata"})
        if extra:
            return _error(400, "BadRequest", f"Unexpected field(s): {', '.join(extra)}")
        spec = body.get("spec") or {}
        metadata = body.get("metadata")
        if not isinstance(spec, Mapping) or set(spec) - PATCH_SPEC_FIELDS:
            return _error(400, "BadRequest", "spec may only set killedAt and trainingProject")
        killed_at = spec.get("killedAt")
        if "killedAt" in spec and (not isinstance(killed_at, int) or isinstance(killed_at, bool)):
            return _error(400, "BadRequest", "spec.killedAt must be epoch milliseconds")
        if metadata is not None and not (
            isinstance(metadata, Mapping) and _is_attributes(metadata.get("attributes", {}))
        ):
            return _error(400, "BadRequest", "metadata.attributes must map strings to strings")
        with self.lock:
            now = self.now()
            if killed_at is not None:
                _, ended = self.state(run, now)
                run.data["killed_at"] = killed_at
                if not ended and run.data.get("kill_at") is None:
                    run.data["kill_at"] = now + self.kill_delay
                    run.cancelled, run.cancelled_at = "Cancelled", now + self.kill_delay
                    self.cancels.append(run.id)
            if "trainingProject" in spec:
                run.data["training_project"] = spec["trainingProject"]
            if metadata is not None:
                run.data["attributes"] = {
                    **run.data["attributes"],
                    **metadata.get("attributes", {}),
                }
            run.data["generation"] += 1
            run.data["modified_at"] = now
            return JSONResponse(self.document(run))

    async def delete_run(self, request: Request) -> Response:
        run = self._find(request)
        if isinstance(run, Response):
            return run
        with self.lock:
            self.runs.pop(run.id, None)
        return Response(status_code=204)

    async def get_flow(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        org, flow_id = request.path_params["org"], request.path_params["flow_id"]
        flow = self.flows.get((org, flow_id))
        if flow is None:
            return _error(404, "NotFound", f"Flow {flow_id} not found")
        created = self.wall_ms(self._mono0)
        return JSONResponse(
            {
                "kind": "Flow",
                "workspaceId": org,
                "flowId": flow_id,
                "spec": flow,
                "metadata": {
                    "timeCreated": created,
                    "lastUpdated": created,
                    "generation": 1,
                    "attributes": {},
                },
                "selfLink": f"/workspaces/{org}/flows/{flow_id}",
                "etag": 'W/"1"',
            }
        )

    async def logs(self, request: Request) -> Response:
        run = self.runs.get(request.path_params["run_id"])
        if run is None or run.data["organization_id"] != request.path_params["org"]:
            return PlainTextResponse("not found", 404)
        lines = [f"{self.wall_ms(at)} {raw}" for raw, at in self.timeline(run, self.now())]
        return PlainTextResponse("\n".join(lines) + "\n")
