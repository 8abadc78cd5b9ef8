"""``vi``: Datature Vi training runs (the REST API behind the ``vi-sdk`` client).

Facts and their sources are in docs/platforms/vi.md (vi-sdk 0.1.0b7). In short:

* A run lives in an organization ("workspace"): ``GET /workspaces/{org}/runs/{run_id}``.
  A :class:`RunRef` carries ``organization_id`` in its scope; the ``organization_id`` option
  fills it in for references that lack it (``client.ref(run_id)``). Every request also sends
  the ``Organization-Id`` header, as the SDK does, beside ``Authorization: Bearer <secret key>``.
* The state is the latest entry of ``status.conditions`` (the last one; a later
  ``lastTransitionTime`` wins if the list is ever out of order): its ``condition`` is one of
  Pending, Running, Succeeded, Failed, Error, Cancelled. The SDK's generic conditions
  (``Started``/``Finished`` with a status ``Waiting``/``Reached``/``FailedReach``) are mapped
  too, as ``"Finished/Reached"`` and so on. Any other value is UNKNOWN, never terminal.
* Launch: ``PUT /workspaces/{org}/runs/{run_id}`` with a run id the *client* chooses, body
  ``{"spec": {"flow": <FlowSpec>, "trainingProject"?}, "metadata"?: {"attributes": {...}}}``.
  runbridge derives the id from the idempotency key (``uuid5``), so ``find`` is one GET of that
  id and a lost answer is recovered by looking the run up. Because a PUT to an existing id
  *replaces* that run (the SDK's ``runs.replace``), the provider reads the id first and never
  PUTs over a run that exists, and the PUT itself is not resent blindly.
* Kill (the SDK's ``runs.kill``): ``PATCH`` the run with ``{"spec": {"killedAt": <epoch ms>}}``.
  A provider reads no clock, so the timestamp is the server's: the ``Date`` header of the GET
  that precedes the PATCH (or the run's ``metadata.lastUpdated``). A run already ended is
  left alone.
* Listing: ``GET /workspaces/{org}/runs?s=<page size>[&p=<token>]`` answers
  ``{"items": [...], "nextPage": <token or null>}``; see :meth:`Vi.list_runs`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Hashable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError, PlatformError, ProtocolError, RunbridgeError
from ..http import Exchange, Request, Response
from ..models import LaunchSpec, RunRef, RunStatus, parse_time
from ..states import RunState
from ._parse import excerpt, ident, mapping, text, unreadable_launch
from .base import Provider

__all__ = ["STATES", "Vi", "run_for_key"]

STATES: dict[str, RunState] = {
    # The run conditions of the Vi documentation (the latest condition's ``condition``).
    "Pending": RunState.PENDING,
    "Running": RunState.RUNNING,
    "Succeeded": RunState.SUCCEEDED,
    "Failed": RunState.FAILED,
    "Error": RunState.FAILED,
    "Cancelled": RunState.CANCELLED,
    # The SDK's generic resource conditions, as "<condition>/<status>".
    "Started/Waiting": RunState.PENDING,
    "Started/Reached": RunState.RUNNING,
    "Started/FailedReach": RunState.FAILED,
    "Finished/Waiting": RunState.RUNNING,
    "Finished/Reached": RunState.SUCCEEDED,
    "Finished/FailedReach": RunState.FAILED,
    # A run the platform has not reported on yet (an empty ``conditions`` list).
    "": RunState.PENDING,
}
"""Raw values and their states. ``Failed`` is the training failing; ``Error`` the run
erroring (the platform could not carry it out): both are FAILED, ``raw_state`` tells them
apart. ``Cancelled`` is what a kill leads to."""

GENERIC_CONDITIONS = frozenset({"Started", "Finished", "All"})
"""Conditions whose meaning depends on their status (``vi.api.responses.Condition``)."""
FLOW_FIELDS = ("name", "schema", "tolerations", "settings", "blocks")
"""Required fields of a FlowSpec (``vi.api.resources.training_projects.flows.responses``)."""
LAUNCH_PARAMS = frozenset({"flow", "flow_id", "training_project", "metadata", "organization_id"})
KEY_NAMESPACE = uuid.UUID("8e1f4b1a-4d36-5a41-9b0c-3c6f1d2e7a90")
"""uuid5 namespace for run ids derived from idempotency keys."""
METADATA_KEY = "runbridge_key"
RUN_LINK = re.compile(r"^/workspaces/(?P<org>[^/]+)/runs/(?P<run>[^/]+)$")
DEFAULT_LIST_LIMIT = 100
MAX_PAGE_SIZE = 1000
"""The SDK accepts page sizes 1..1000 (``vi.client.validation.validate_pagination_params``)."""


def run_for_key(key: str) -> str:
    """The run id of a keyed launch."""
    return str(uuid.uuid5(KEY_NAMESPACE, key))


def _epoch_ms(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class Vi(Provider):
    """Datature Vi. Options: ``organization_id`` (the default for run references and launches;
    without it each reference and launch names its own), ``run_url`` (a template with
    ``{organization_id}`` and ``{run_id}`` for the run's page; by default a status links to the
    run's log URL when the platform gives one)."""

    name = "vi"
    states = STATES
    ref_scope = ("organization_id",)
    supports_find = True
    auto_key = True

    def __init__(self, *, organization_id: str | None = None, run_url: str | None = None) -> None:
        if organization_id is not None and (
            not isinstance(organization_id, str) or not organization_id.strip()
        ):
            raise ConfigError("vi: organization_id must be a non-empty string")
        if run_url is not None:
            try:
                run_url.format(organization_id="o", run_id="r")
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise ConfigError(
                    f"vi: run_url {run_url!r} is not a valid template "
                    f"(use {{organization_id}} and {{run_id}}): {exc}"
                ) from None
        self.organization_id = organization_id
        self.run_url = run_url

    def auth_headers(self, token: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if self.organization_id:
            headers["Organization-Id"] = self.organization_id
        return headers

    # -- references ----------------------------------------------------------------------------
    def check_ref(self, ref: RunRef) -> RunRef:
        """Accept a run's link (``/workspaces/{org}/runs/{id}``, its ``selfLink``) as its id, and
        fill in the ``organization_id`` option where the reference has none."""
        if ref.platform == self.name:
            link = RUN_LINK.match(ref.id)
            if link:
                ref = RunRef(
                    ref.platform,
                    link["run"],
                    {
                        **ref.scope,
                        "organization_id": ref.scope.get("organization_id") or link["org"],
                    },
                )
            if not ref.scope.get("organization_id"):
                if not self.organization_id:
                    raise ConfigError(
                        f"a vi run reference needs organization_id in its scope (or pass the "
                        f"organization_id option to the client); got {ref}"
                    )
                ref = RunRef(
                    ref.platform, ref.id, {**ref.scope, "organization_id": self.organization_id}
                )
        return super().check_ref(ref)

    def _org(self, value: Any, where: str) -> str:
        org = value if value is not None else self.organization_id
        if not isinstance(org, str) or not org.strip():
            raise ConfigError(
                f"vi: {where} needs an organization: pass params['organization_id'] or the "
                "organization_id option"
            )
        return org

    @staticmethod
    def _runs_path(org: str) -> str:
        return f"/workspaces/{quote(org, safe='')}/runs"

    def _run_path(self, org: str, run_id: str) -> str:
        return f"{self._runs_path(org)}/{quote(run_id, safe='')}"

    @staticmethod
    def _headers(org: str) -> dict[str, str]:
        return {"Organization-Id": org}

    def _get_run(self, org: str, run_id: str) -> Request:
        return Request("GET", self._run_path(org, run_id), headers=self._headers(org))

    # -- launch --------------------------------------------------------------------------------
    def _launch_body(self, spec: LaunchSpec) -> tuple[str, dict[str, Any], str | None]:
        """(organization, PUT body without the flow if it is to be fetched, flow id or None)."""
        params = dict(spec.params)
        unknown = sorted(set(params) - LAUNCH_PARAMS)
        if unknown:
            raise ConfigError(
                f"vi: unknown launch param(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(LAUNCH_PARAMS))}"
            )
        org = self._org(params.get("organization_id"), "launch")
        flow, flow_id = params.get("flow"), params.get("flow_id")
        if (flow is None) == (flow_id is None):
            raise ConfigError(
                "vi: launch needs exactly one of params['flow'] (a flow spec: "
                f"{', '.join(FLOW_FIELDS)}) and params['flow_id'] (an existing flow's id)"
            )
        if flow_id is not None and (not isinstance(flow_id, str) or not flow_id):
            raise ConfigError("vi: params['flow_id'] must be a flow id string")
        run_spec: dict[str, Any] = {}
        if flow is not None:
            run_spec["flow"] = self._check_flow(flow, "params['flow']")
        training_project = params.get("training_project")
        if training_project is not None:
            if not isinstance(training_project, str) or not training_project:
                raise ConfigError("vi: params['training_project'] must be a non-empty string")
            run_spec["trainingProject"] = training_project
        attributes = params.get("metadata") or {}
        if not isinstance(attributes, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise ConfigError("vi: params['metadata'] must map strings to strings")
        attributes = dict(attributes)
        if spec.key:
            attributes[METADATA_KEY] = spec.key
        body: dict[str, Any] = {"spec": run_spec}
        if attributes:
            body["metadata"] = {"attributes": attributes}
        return org, body, flow_id

    @staticmethod
    def _check_flow(flow: Any, what: str) -> dict[str, Any]:
        if not isinstance(flow, Mapping):
            raise ConfigError(f"vi: {what} must be a flow spec mapping, got {type(flow).__name__}")
        missing = [name for name in FLOW_FIELDS if name not in flow]
        if missing:
            raise ConfigError(f"vi: {what} is missing {', '.join(missing)}")
        return dict(flow)

    def can_find(self, spec: LaunchSpec) -> bool:
        return True

    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        org, body, flow_id = self._launch_body(spec)
        run_id = run_for_key(spec.key) if spec.key else self.new_id()
        # A PUT to an existing id replaces that run: never do it. A key names one run.
        existing: Response = yield self._get_run(org, run_id)
        if existing.status_code != 404:
            # a run with this id exists (or the answer is an error): never PUT over it
            return self._launched(existing, org, run_id)
        if flow_id is not None:
            response = yield Request(
                "GET",
                f"/workspaces/{quote(org, safe='')}/flows/{quote(flow_id, safe='')}",
                headers=self._headers(org),
            )
            body["spec"] = {"flow": self._flow_of(self.decipher(response), flow_id), **body["spec"]}
        response = yield Request(
            "PUT",
            self._run_path(org, run_id),
            json=body,
            headers=self._headers(org),
            # Not resent as such: after an unclear failure the launch flow looks the id up
            # (find) and only then PUTs again, so a PUT never lands on a run that exists.
            retry=False,
        )
        return self._launched(response, org, run_id)

    def _launched(self, response: Response, org: str, run_id: str) -> RunRef:
        """The run a 2xx answer about ``run_id`` (the id runbridge chose) reports, as the server
        names it. An answer that cannot be read proves nothing (a proxy's garbage page): a
        ProtocolError, which the launch flow treats as a lost answer (it looks the id up)."""
        if not response.ok:
            raise self.error_for(response)
        try:
            run = response.json()
        except ProtocolError:
            raise unreadable_launch(self.name, "cannot be read", response, run_id=run_id) from None
        org = text(mapping(run).get("workspaceId")) or org
        return RunRef(
            self.name, ident(mapping(run).get("runId")) or run_id, {"organization_id": org}
        )

    def _flow_of(self, data: Any, flow_id: str) -> dict[str, Any]:
        """The FlowSpec in a flow document (``{"kind": "Flow", "spec": {...}}``), or the document
        itself when the server answers a bare FlowSpec (what ``runs.create(flow=<id>)`` expects)."""
        if isinstance(data, Mapping) and isinstance(data.get("spec"), Mapping):
            data = data["spec"]
        if not isinstance(data, Mapping) or any(name not in data for name in FLOW_FIELDS):
            raise ProtocolError(f"vi: flow {flow_id} has no flow spec in {excerpt(data)}")
        return dict(data)

    def find(self, spec: LaunchSpec) -> Exchange[RunRef | None]:
        assert spec.key is not None
        org = self._org(spec.params.get("organization_id"), "launch")
        response = yield self._get_run(org, run_for_key(spec.key))
        if response.status_code == 404:
            return None
        return self._ref(self.decipher(response), org)

    def _ref(self, run: Any, org: str) -> RunRef:
        run_id = ident(mapping(run).get("runId"))
        if run_id is None:
            raise ProtocolError(f"vi: expected a run object with a runId, got {excerpt(run)}")
        return RunRef(
            self.name, run_id, {"organization_id": text(mapping(run).get("workspaceId")) or org}
        )

    # -- status ---------------------------------------------------------------------------------
    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        org = ref.scope["organization_id"]
        run = self.decipher((yield self._get_run(org, ref.id)))
        return self.parse_status(ref, run)

    @staticmethod
    def latest_condition(conditions: Any) -> Mapping[str, Any] | None:
        """The run's current condition: the last entry of ``status.conditions``; an entry with a
        later ``lastTransitionTime`` wins over its position (ties go to the later entry)."""
        if not isinstance(conditions, list):
            return None
        entries = [c for c in conditions if isinstance(c, Mapping)]
        if not entries:
            return None
        order = range(len(entries))
        best = max(order, key=lambda i: (_epoch_ms(entries[i].get("lastTransitionTime")) or 0, i))
        return entries[best]

    @staticmethod
    def raw_state_of(condition: Mapping[str, Any] | None) -> str:
        if condition is None:
            return ""
        value = str(condition.get("condition") or "")
        if value in GENERIC_CONDITIONS:
            return f"{value}/{condition.get('status') or ''}"
        return value

    def parse_status(self, ref: RunRef, run: Any) -> RunStatus:
        if not isinstance(run, Mapping) or not isinstance(run.get("status"), Mapping):
            raise ProtocolError(f"vi: expected a run object with a status, got {excerpt(run)}")
        status: Mapping[str, Any] = run["status"]
        spec, metadata = _mapping(run.get("spec")), _mapping(run.get("metadata"))
        conditions = status.get("conditions")
        latest = self.latest_condition(conditions)
        raw = self.raw_state_of(latest)
        state = self.map_state(raw)
        message = None
        if latest is not None:
            reason, text = latest.get("reason"), latest.get("message")
            if reason and text:
                message = f"{reason}: {text}"
            elif reason or text:
                message = str(text or reason)
        log = status.get("log")
        log_url = str(log) if isinstance(log, str) and log else None
        killed_at = _epoch_ms(spec.get("killedAt"))
        outputs: dict[str, Any] = {
            "flow": spec.get("flow"),
            "training_project": spec.get("trainingProject"),
            "killed_at": killed_at,
            "log_url": log_url,
            "conditions": conditions if isinstance(conditions, list) else [],
            "attributes": metadata.get("attributes") or {},
        }
        ended = None
        if state.is_terminal:
            ended = parse_time(latest.get("lastTransitionTime") if latest else None)
            ended = ended or parse_time(killed_at)
        url = log_url if log_url and log_url.startswith(("http://", "https://")) else None
        if self.run_url:
            url = self.run_url.format(
                organization_id=ref.scope.get("organization_id", ""), run_id=ref.id
            )
        return RunStatus(
            ref=ref,
            state=state,
            raw_state=raw,
            url=url,
            message=message,
            outputs=outputs,
            created_at=parse_time(metadata.get("timeCreated")),
            updated_at=parse_time(metadata.get("lastUpdated")),
            ended_at=ended,
        )

    # -- kill ------------------------------------------------------------------------------------
    def cancel(self, ref: RunRef) -> Exchange[None]:
        org = ref.scope["organization_id"]
        response: Response = yield self._get_run(org, ref.id)
        run = self.decipher(response)
        if self.parse_status(ref, run).is_terminal:
            return None  # it already ended: nothing to kill
        metadata = _mapping(run.get("metadata"))
        killed_at = max(
            self._date_ms(response.headers.get("date")) or 0,
            _epoch_ms(metadata.get("lastUpdated")) or 0,
            _epoch_ms(metadata.get("timeCreated")) or 0,
        )
        if killed_at <= 0:
            raise ProtocolError(
                f"vi: cannot time the kill of run {ref.id}: the answer has no Date header and "
                "the run no metadata.lastUpdated"
            )
        self.decipher(
            (
                yield Request(
                    "PATCH",
                    self._run_path(org, ref.id),
                    json={"spec": {"killedAt": killed_at}},
                    headers=self._headers(org),
                    retry=True,  # the same body twice kills once
                )
            )
        )
        return None

    @staticmethod
    def _date_ms(value: str | None) -> int | None:
        if not value:
            return None
        try:
            return int(parsedate_to_datetime(value).timestamp() * 1000)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None

    # -- the hub's batch: one page of the run list ---------------------------------------------
    max_batch = MAX_PAGE_SIZE

    def batch_key(self, ref: RunRef) -> Hashable | None:
        return ref.scope.get("organization_id")  # one organization's list per request

    def status_many(
        self, refs: Sequence[RunRef]
    ) -> Exchange[dict[RunRef, RunStatus | RunbridgeError]]:
        """The runs asked about, read from one page of the organization's run list (newest
        first, the only many-runs read Vi's API has: it cannot filter by id). The page holds
        ``min(1000, max(100, 4 * len(refs)))`` runs; an older run not on it is left out of the
        answer, so the hub checks it alone."""
        org = refs[0].scope["organization_id"]
        size = min(MAX_PAGE_SIZE, max(DEFAULT_LIST_LIMIT, 4 * len(refs)))
        response = yield Request(
            "GET", self._runs_path(org), params={"s": size}, headers=self._headers(org)
        )
        page = self.decipher(response)
        if not isinstance(page, Mapping) or not isinstance(page.get("items", []), list):
            raise ProtocolError(f"vi: expected a page of runs, got {excerpt(page)}")
        wanted = {ref.id: ref for ref in refs}
        out: dict[RunRef, RunStatus | RunbridgeError] = {}
        for item in page.get("items", []):
            run_id = ident(mapping(item).get("runId"))
            ref = wanted.get(run_id) if run_id is not None else None
            if ref is None:
                continue
            try:
                out[ref] = self.parse_status(ref, item)
            except ProtocolError as exc:  # that run alone is unreadable: checked alone
                out[ref] = exc
        return out

    # -- listing ---------------------------------------------------------------------------------
    def list_runs(
        self,
        *,
        organization_id: str | None = None,
        limit: int | None = DEFAULT_LIST_LIMIT,
        page_size: int | None = None,
        **filters: Any,
    ) -> Exchange[list[RunStatus]]:
        """The organization's runs, newest first as the platform lists them, one request per
        page, up to ``limit`` runs (None: every page). ``page_size`` (1..1000) defaults to
        ``min(limit, 100)``."""
        if filters:
            raise ConfigError(
                f"vi: listing runs takes organization_id, limit and page_size, not "
                f"{', '.join(sorted(filters))}"
            )
        org = self._org(organization_id, "listing runs")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ConfigError(f"vi: limit must be a positive integer or None, got {limit!r}")
        if page_size is None:
            page_size = min(limit or DEFAULT_LIST_LIMIT, DEFAULT_LIST_LIMIT)
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= MAX_PAGE_SIZE
        ):
            raise ConfigError(f"vi: page_size must be 1..{MAX_PAGE_SIZE}, got {page_size!r}")
        if limit is not None:
            page_size = min(page_size, limit)
        runs: list[RunStatus] = []
        seen: set[str] = set()
        token: str | None = None
        while True:
            params: dict[str, str | int] = {"s": page_size}
            if token:
                params["p"] = token
            response = yield Request(
                "GET", self._runs_path(org), params=params, headers=self._headers(org)
            )
            page = self.decipher(response)
            if not isinstance(page, Mapping) or not isinstance(page.get("items", []), list):
                raise ProtocolError(f"vi: expected a page of runs, got {excerpt(page)}")
            for item in page.get("items", []):
                ref = self._ref(item, org)
                runs.append(self.parse_status(ref, item))
                if limit is not None and len(runs) >= limit:
                    return runs
            next_page = page.get("nextPage")
            if not next_page or not isinstance(next_page, str) or next_page in seen:
                return runs  # no more pages (a repeated token would loop forever)
            seen.add(next_page)
            token = next_page

    # -- errors ----------------------------------------------------------------------------------
    def error_for(self, response: Response) -> PlatformError:
        error = super().error_for(response)
        if error.request_id is None:
            trace = response.headers.get("x-cloud-trace-context")
            if trace:
                error.request_id = trace.split("/")[0]
        return error
