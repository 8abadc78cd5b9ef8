"""An example JSON run API, for the generic ``rest`` provider (and its demo).

Not a real vendor: a small, conventional jobs API whose configuration for the ``rest``
provider is :data:`REST_CONFIG`::

    POST /api/v1/jobs/{job}/runs      (Idempotency-Key header honoured) -> 201 {"run": {...}}
    GET  /api/v1/runs/{run_id}        -> 200 {"run": {...}} | 404 {"detail": ...}
    POST /api/v1/runs/{run_id}/cancel -> 202 {"run": {...}} | 409 when already finished

A run object: ``{"id", "job", "status", "created_at", "updated_at", "finished_at", "url",
"error": {"message"} | null, "result": {...} | null}``; status is one of queued, running,
succeeded, failed, cancelled, timed_out.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._control import route
from ._emulator import EmulatedRun, Emulator, Script, json_error

__all__ = ["REST_CONFIG", "RestEmulator"]

REST_CONFIG: dict[str, Any] = {
    "launch": {
        "method": "POST",
        "path": "/api/v1/jobs/{job}/runs",
        "id": "run.id",
        "idempotency_header": "Idempotency-Key",
    },
    "status": {
        "path": "/api/v1/runs/{run_id}",
        "state": "run.status",
        "url": "run.url",
        "message": "run.error.message",
        "outputs": "run.result",
        "created_at": "run.created_at",
        "updated_at": "run.updated_at",
        "ended_at": "run.finished_at",
    },
    "cancel": {"method": "POST", "path": "/api/v1/runs/{run_id}/cancel"},
    "states": {
        "queued": "PENDING",
        "running": "RUNNING",
        "succeeded": "SUCCEEDED",
        "failed": "FAILED",
        "cancelled": "CANCELLED",
        "timed_out": "TIMED_OUT",
    },
}
"""Options for ``RunClient("rest", emu.base_url, **REST_CONFIG)``."""


class RestEmulator(Emulator):
    platform = "rest"
    default_script = Script(
        [("queued", 0.2), ("running", 1.0)], final="succeeded", outputs={"rows": 42}
    )
    # the control API's script words and fault targets (Script.error_type: no place for it)
    script_words = {
        "queued": "queued",
        "running": "running",
        "success": "succeeded",
        "failed": "failed",
        "cancelled": "cancelled",
        "unknown": "paused",
    }
    raw_states = frozenset(REST_CONFIG["states"])
    fault_targets = {
        "launch": route("POST", r"^/api/v1/jobs/[^/]+/runs$"),
        "status": route("GET", r"^/api/v1/runs/[^/]+$"),
        "cancel": route("POST", r"^/api/v1/runs/[^/]+/cancel$"),
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: dict[str, str] = {}
        self._wall0 = datetime.now(timezone.utc)
        self._mono0 = self.now()

    def _time(self, mono: float | None) -> str | None:
        if mono is None:
            return None
        return (self._wall0 + timedelta(seconds=mono - self._mono0)).isoformat()

    def run_key(self, run: EmulatedRun) -> str | None:
        return next((key for key, run_id in self._keys.items() if run_id == run.id), None)

    def check_auth(self, request: Request) -> JSONResponse | None:
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return json_error(401, "invalid or missing API token")
        return None

    def body(self, run: EmulatedRun) -> dict[str, Any]:
        now = self.now()
        raw, done = run.state(now)
        script = run.script
        failed = done and run.cancelled is None and raw in ("failed", "timed_out")
        return {
            "run": {
                "id": run.id,
                "job": run.data.get("job"),
                "status": raw,
                "created_at": self._time(run.started),
                "updated_at": self._time(now),
                "finished_at": self._time(run.finished_at(now)) if done else None,
                "url": f"{self.base_url}/ui/runs/{run.id}",
                "error": {"message": script.message or f"run {raw}"} if failed else None,
                "result": dict(script.outputs or {}) if done and raw == "succeeded" else None,
                "params": run.data.get("params"),
            }
        }

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/jobs/{job}/runs", self.create, methods=["POST"]),
            Route("/api/v1/runs/{run_id}", self.get, methods=["GET"]),
            Route("/api/v1/runs/{run_id}/cancel", self.cancel, methods=["POST"]),
        ]

    async def create(self, request: Request) -> Response:
        if (denied := self.check_auth(request)) is not None:
            return denied
        try:
            params = await request.json()
        except ValueError:
            return json_error(400, "request body must be JSON")
        if not isinstance(params, dict):
            return json_error(422, "request body must be a JSON object")
        key = request.headers.get("idempotency-key")
        with self.lock:
            if key and key in self._keys:
                return JSONResponse(self.body(self.runs[self._keys[key]]), 200)
            run = self.add_run(job=request.path_params["job"], params=params)
            if key:
                self._keys[key] = run.id
            self.launches.append(params)
        return JSONResponse(self.body(run), 201)

    def _run(self, request: Request) -> EmulatedRun | Response:
        if (denied := self.check_auth(request)) is not None:
            return denied
        run = self.runs.get(request.path_params["run_id"])
        if run is None:
            return json_error(404, f"run {request.path_params['run_id']} not found")
        return run

    async def get(self, request: Request) -> Response:
        run = self._run(request)
        return run if isinstance(run, Response) else JSONResponse(self.body(run))

    async def cancel(self, request: Request) -> Response:
        run = self._run(request)
        if isinstance(run, Response):
            return run
        with self.lock:
            raw, done = run.state(self.now())
            if done:
                return json_error(409, f"run {run.id} already finished ({raw})")
            run.cancelled, run.cancelled_at = "cancelled", self.now()
            self.cancels.append(run.id)
        return JSONResponse(self.body(run), 202)
