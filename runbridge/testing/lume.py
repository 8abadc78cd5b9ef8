"""An emulator of the Lume run API behind the Python SDK's ``LumeRun`` (``lume.run`` /
``lume.run_status``), with webhook deliveries.

That API is not public: this emulator follows the documented SDK semantics and the conventions
of Lume's public SDKs, as described (with every assumption marked) in docs/platforms/lume.md::

    POST /runs            {"flow_version", "source_path", "run_metadata"?, "force_rerun"?,
                           "webhook_url"?}                         -> 201 run object
    GET  /runs/{run_id}                                            -> 200 run object | 404

Auth: header ``lume-api-key`` (checked when the emulator has a ``token``); 401 otherwise.
Errors are FastAPI-style: ``{"detail": "..."}``, or for a malformed body 422 ``{"detail":
[{"loc": [...], "msg", "type"}]}``. A ``source_path`` already processed by a flow version
(a run that is still going, SUCCEEDED or PARTIAL_FAILED) is refused with 409 unless
``force_rerun`` is true.

A run object: ``{"id": "run_<ULID>", "status", "flow_version", "source_path", "run_metadata",
"created_at", "updated_at", "metadata"}``; ``metadata`` is the documented object (run,
pipeline, results, validation, errors), complete once the run has ended.

Runs follow a :class:`Script` whose steps are Lume statuses (``CREATED``, ``SYNCING_SOURCE``,
``TRANSFORMING``, ``SYNCING_TARGET``) and whose final status is ``SUCCEEDED``,
``PARTIAL_FAILED``, ``FAILED`` or ``CRASHED``. ``script.message`` is the error message of a
failed run; ``script.outputs`` is deep-merged over the generated metadata (e.g.
``{"results": {"input_rows": 1000, "rejected_rows": 80}}``).

Webhooks: when a run ends, the emulator POSTs a summary of it (see :meth:`webhook_payload`) to
the run's ``webhook_url`` or else the emulator's, signed with ``X-Lume-Signature-256:
sha256=<hex>`` when ``webhook_secret`` is set. Retries are off by default
(``webhook_retries=0``); each attempt is recorded in ``deliveries``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..core.webhooks import sign
from ._control import route
from ._emulator import EmulatedRun, Emulator, Script, json_error

__all__ = ["LumeEmulator", "WebhookDelivery", "ulid"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
STAGE_FIELDS = {
    "SYNCING_SOURCE": "sync_source_seconds",
    "TRANSFORMING": "transform_seconds",
    "SYNCING_TARGET": "sync_target_seconds",
}
TERMINAL = frozenset({"SUCCEEDED", "PARTIAL_FAILED", "FAILED", "CRASHED"})
PROCESSED = frozenset({"SUCCEEDED", "PARTIAL_FAILED"})
"""Terminal statuses after which Lume refuses the same source_path without force_rerun."""
SIGNATURE_HEADER = "X-Lume-Signature-256"
WEBHOOK_EVENT = "run.completed"


def ulid(ms: int | None = None) -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits, in Crockford base32 (26 chars)."""
    stamp = int(time.time() * 1000) if ms is None else ms
    value = (stamp << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


@dataclasses.dataclass(frozen=True)
class WebhookDelivery:
    """One attempt to deliver a webhook."""

    run_id: str
    url: str
    attempt: int
    body: bytes
    headers: Mapping[str, str]
    status_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class LumeEmulator(Emulator):
    platform = "lume"
    default_script = Script(
        [("CREATED", 0.2), ("SYNCING_SOURCE", 0.3), ("TRANSFORMING", 0.5), ("SYNCING_TARGET", 0.3)],
        final="SUCCEEDED",
    )
    # the control API's script words and fault targets: Lume has no cancel (no "cancelled"
    # state, no cancel request, no cancel_run); Script.error_type is the error's error_code
    script_words = {
        "queued": "CREATED",
        "running": "TRANSFORMING",
        "success": "SUCCEEDED",
        "failed": "FAILED",
        "cancelled": None,
        "unknown": "PAUSED",
    }
    raw_states = frozenset(
        {"CREATED", "SYNCING_SOURCE", "TRANSFORMING", "SYNCING_TARGET"}
        | {"SUCCEEDED", "PARTIAL_FAILED", "FAILED", "CRASHED"}
    )
    fault_targets = {
        "launch": route("POST", r"^/runs$"),
        "status": route("GET", r"^/runs/[^/]+$"),
    }

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_retries: int = 0,
        webhook_retry_delay: float = 0.2,
        webhook_timeout: float = 5.0,
        flow_versions: set[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if webhook_retries < 0 or webhook_retry_delay < 0 or webhook_timeout <= 0:
            raise ValueError("webhook_retries and webhook_retry_delay must be >= 0, timeout > 0")
        self.webhook_url = webhook_url
        """Where deliveries go for runs launched without their own ``webhook_url``."""
        self.webhook_secret = webhook_secret
        self.webhook_retries = webhook_retries
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_timeout = webhook_timeout
        self.flow_versions = flow_versions
        """When set, the only flow versions that exist; others are refused with 404."""
        self.deliveries: list[WebhookDelivery] = []
        self._delivered = threading.Condition(self.lock)
        self._timers: list[threading.Timer] = []
        self._closed = threading.Event()
        self._wall0 = datetime.now(timezone.utc)
        self._mono0 = self.now()

    # -- time and ids --------------------------------------------------------------------------
    def new_id(self) -> str:
        return "run_" + ulid()

    def _time(self, mono: float | None) -> str | None:
        if mono is None:
            return None
        wall = self._wall0 + timedelta(seconds=mono - self._mono0)
        return wall.isoformat().replace("+00:00", "Z")

    # -- runs ----------------------------------------------------------------------------------
    def add_run(
        self, script: Script | None = None, run_id: str | None = None, **data: Any
    ) -> EmulatedRun:
        """Create a run (as ``POST /runs`` does, or as if launched elsewhere) and schedule its
        webhook delivery for the moment it ends."""
        data.setdefault("flow_version", "emulated_flow:v1")
        data.setdefault("source_path", f"emulator://batches/{ulid()}")
        data.setdefault("run_metadata", {})
        run = super().add_run(script, run_id, **data)
        self._schedule(run)
        return run

    def metadata(self, run: EmulatedRun, now: float | None = None) -> dict[str, Any]:
        """The run's ``metadata`` object at ``now``: complete once it has ended."""
        now = self.now() if now is None else now
        raw, done = run.state(now)
        elapsed = now - run.started
        stages: dict[str, float] = {}
        t = 0.0
        for step, seconds in run.script.steps:
            spent = max(0.0, min(seconds, elapsed - t))
            t += seconds
            if step in STAGE_FIELDS and spent > 0:
                field = STAGE_FIELDS[step]
                stages[field] = round(stages.get(field, 0.0) + spent, 6)
        ended = run.finished_at(now) if done else None
        meta: dict[str, Any] = {
            "run": {
                "run_id": run.id,
                "flow_version": run.data.get("flow_version"),
                "source_path": run.data.get("source_path"),
                "status": raw,
            },
            "pipeline": {
                "created_at": self._time(run.started),
                "completed_at": self._time(ended),
                "duration_seconds": round(ended - run.started, 6) if ended is not None else None,
                "stages": {field: stages.get(field, 0.0) for field in STAGE_FIELDS.values()},
            },
            "results": {},
            "validation": {},
            "errors": [],
        }
        if not done:
            return meta
        meta["results"], meta["validation"] = self._outcome(run, raw)
        if raw in ("FAILED", "CRASHED"):
            stage = next(
                (s for s, _ in reversed(run.script.steps) if s in STAGE_FIELDS), "TRANSFORMING"
            )
            crashed = raw == "CRASHED"
            meta["errors"] = [
                {
                    "stage": stage,
                    "error_code": run.script.error_type
                    or ("INTERNAL_ERROR" if crashed else "TRANSFORMATION_FAILED"),
                    "message": run.script.message
                    or ("the run terminated unexpectedly" if crashed else "the run failed"),
                }
            ]
        return _merge(meta, run.script.outputs or {})

    def _outcome(self, run: EmulatedRun, raw: str) -> tuple[dict[str, Any], dict[str, Any]]:
        base = f"s3://lume-emulator/{run.data.get('flow_version')}/{run.id}"
        results: dict[str, Any]
        if raw == "SUCCEEDED":
            results = {"input_rows": 100, "mapped_rows": 100, "rejected_rows": 0}
            validation: dict[str, Any] = {
                "tests_executed": 20,
                "tests_failed": 0,
                "error_rate": 0.0,
                "top_errors": [],
            }
        elif raw == "PARTIAL_FAILED":
            results = {"input_rows": 100, "mapped_rows": 95, "rejected_rows": 5}
            validation = {
                "tests_executed": 20,
                "tests_failed": 2,
                "error_rate": 0.1,
                "top_errors": [
                    {"error_code": "INVALID_FORMAT", "field": "email", "count": 3},
                    {"error_code": "MISSING_REQUIRED", "field": "customer_id", "count": 2},
                ],
            }
        else:
            results = {"input_rows": 100, "mapped_rows": 0, "rejected_rows": 0}
            validation = {
                "tests_executed": 0,
                "tests_failed": 0,
                "error_rate": 0.0,
                "top_errors": [],
            }
        results["target_locations"] = {
            "mapped": f"{base}/mapped.parquet" if raw in PROCESSED else None,
            "rejects": f"{base}/rejects.parquet" if raw == "PARTIAL_FAILED" else None,
        }
        return results, validation

    def body(self, run: EmulatedRun) -> dict[str, Any]:
        """The run object that ``GET /runs/{run_id}`` answers."""
        now = self.now()
        raw, done = run.state(now)
        return {
            "id": run.id,
            "status": raw,
            "flow_version": run.data.get("flow_version"),
            "source_path": run.data.get("source_path"),
            "run_metadata": run.data.get("run_metadata") or {},
            "created_at": self._time(run.started),
            "updated_at": self._time(run.finished_at(now) if done else now),
            "metadata": self.metadata(run, now),
        }

    # -- webhooks ------------------------------------------------------------------------------
    def webhook_payload(self, run: EmulatedRun) -> dict[str, Any]:
        """What a delivery carries: a summary of the ended run (the full metadata is read with
        ``GET /runs/{run_id}``, as Lume's docs advise)."""
        meta = self.metadata(run)
        raw, _ = run.state(self.now())
        return {
            "event": WEBHOOK_EVENT,
            "run_id": run.id,
            "status": raw,
            "flow_version": run.data.get("flow_version"),
            "source_path": run.data.get("source_path"),
            "run_metadata": run.data.get("run_metadata") or {},
            "created_at": meta["pipeline"]["created_at"],
            "completed_at": meta["pipeline"]["completed_at"],
            "results": meta["results"],
            "validation": meta["validation"],
            "errors": meta["errors"],
        }

    def _schedule(self, run: EmulatedRun) -> None:
        delay = max(0.0, run.started + run.script.duration - self.now())
        timer = threading.Timer(delay, self.deliver, args=(run.id,))
        timer.daemon = True
        with self.lock:
            if self._closed.is_set():
                return
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    def deliver(self, run_id: str) -> list[WebhookDelivery]:
        """POST the webhook of an ended run now (called when the run ends; tests may call it
        again to redeliver). Returns this delivery's attempts; none without a URL."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                return []
            url = run.data.get("webhook_url") or self.webhook_url
            _, done = run.state(self.now())
            if not url:
                return []
            if not done:  # a timer that fired a little early: try again when the run ends
                self._schedule(run)
                return []
            body = json.dumps(self.webhook_payload(run), separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "user-agent": "lume-webhooks (emulator)"}
        if self.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(body, self.webhook_secret)
        attempts: list[WebhookDelivery] = []
        for attempt in range(1, self.webhook_retries + 2):
            if attempt > 1 and self._closed.wait(self.webhook_retry_delay):
                break
            try:
                response = httpx.post(
                    url, content=body, headers=headers, timeout=self.webhook_timeout
                )
                record = WebhookDelivery(run_id, url, attempt, body, headers, response.status_code)
            except httpx.HTTPError as exc:
                record = WebhookDelivery(
                    run_id, url, attempt, body, headers, error=f"{type(exc).__name__}: {exc}"
                )
            attempts.append(record)
            with self._delivered:
                self.deliveries.append(record)
                self._delivered.notify_all()
            if record.ok:
                break
        return attempts

    def wait_for_deliveries(self, count: int, timeout: float = 10.0) -> list[WebhookDelivery]:
        """Block until at least ``count`` delivery attempts were made (or raise TimeoutError)."""
        end = time.monotonic() + timeout
        with self._delivered:
            while len(self.deliveries) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(self.deliveries)} webhook delivery attempt(s), expected {count}"
                    )
                self._delivered.wait(left)
            return list(self.deliveries)

    def close(self) -> None:
        """Cancel the deliveries not made yet."""
        self._closed.set()
        with self.lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()

    # -- HTTP ----------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> JSONResponse | None:
        if self.token and request.headers.get("lume-api-key") != self.token:
            return json_error(401, "Invalid or missing API key")
        return None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/runs", self.create, methods=["POST"]),
            Route("/runs/{run_id}", self.get, methods=["GET"]),
        ]

    @staticmethod
    def _invalid(*problems: tuple[str, str, str]) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"loc": ["body", f], "msg": m, "type": t} for f, m, t in problems]}, 422
        )

    async def create(self, request: Request) -> Response:
        if (denied := self.check_auth(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(
                {"detail": [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]},
                422,
            )
        if not isinstance(body, dict):
            return self._invalid(("", "Input should be a valid dictionary", "model_type"))
        problems = []
        for field in ("flow_version", "source_path"):
            value = body.get(field)
            if value is None:
                problems.append((field, "Field required", "missing"))
            elif not isinstance(value, str) or not value.strip():
                problems.append((field, "Input should be a non-empty string", "string_type"))
        if not isinstance(body.get("run_metadata", {}), dict):
            problems.append(("run_metadata", "Input should be a valid dictionary", "dict_type"))
        if not isinstance(body.get("force_rerun", False), bool):
            problems.append(("force_rerun", "Input should be a valid boolean", "bool_type"))
        webhook_url = body.get("webhook_url")
        if webhook_url is not None and not (
            isinstance(webhook_url, str) and webhook_url.startswith(("http://", "https://"))
        ):
            problems.append(("webhook_url", "Input should be a valid URL", "url_parsing"))
        if problems:
            return self._invalid(*problems)
        flow_version, source_path = body["flow_version"], body["source_path"]
        if self.flow_versions is not None and flow_version not in self.flow_versions:
            return json_error(404, f"Flow version '{flow_version}' not found")
        with self.lock:
            now = self.now()
            if not body.get("force_rerun"):
                for other in self.runs.values():
                    if (other.data.get("flow_version"), other.data.get("source_path")) != (
                        flow_version,
                        source_path,
                    ):
                        continue
                    raw, done = other.state(now)
                    if not done or raw in PROCESSED:
                        return json_error(
                            409,
                            f"source_path '{source_path}' has already been processed by flow "
                            f"version '{flow_version}' (run {other.id}, {raw}); "
                            "pass force_rerun=true to process it again",
                        )
            run = self.add_run(
                flow_version=flow_version,
                source_path=source_path,
                run_metadata=body.get("run_metadata") or {},
                force_rerun=bool(body.get("force_rerun")),
                webhook_url=webhook_url,
            )
            self.launches.append(body)
            answer = self.body(run)
        return JSONResponse(answer, 201)

    async def get(self, request: Request) -> Response:
        if (denied := self.check_auth(request)) is not None:
            return denied
        run_id = request.path_params["run_id"]
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                return json_error(404, f"Run '{run_id}' not found")
            return JSONResponse(self.body(run))
