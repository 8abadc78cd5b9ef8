"""``rest``: a provider configured declaratively for any JSON-over-HTTP run API.

::

    RunClient(
        "rest", "https://jobs.example.com", token=...,
        launch={"method": "POST", "path": "/api/v1/jobs/{job}/runs", "id": "run.id",
                "scope": ["job"], "idempotency_header": "Idempotency-Key"},
        status={"path": "/api/v1/runs/{run_id}", "state": "run.status", "url": "run.url",
                "message": "run.error.message", "outputs": "run.result"},
        cancel={"method": "POST", "path": "/api/v1/runs/{run_id}/cancel"},
        states={"queued": "PENDING", "running": "RUNNING", "succeeded": "SUCCEEDED",
                "failed": "FAILED", "cancelled": "CANCELLED"},
        auth={"header": "Authorization", "scheme": "Bearer"},
        batch={"method": "POST", "path": "/api/v1/runs:batchGet", "ids": "ids",
               "runs": "runs", "id": "id", "wrap": "run", "max": 100},
    )

Paths are templates: ``{run_id}`` is the run's id, other names come from the launch params
(launch) or the run reference's scope (status, cancel). The launch body is ``params["body"]``
when given, else the params that the path did not use. Locations in JSON answers are dotted
paths (``run.error.message``, ``items.0.id``). Bad configuration is rejected at construction
with a message naming the field.

``batch`` (optional) names the API's request for many runs' statuses at once, which the hub
of an ``AsyncRunClient`` uses for checks that fall due together: ``path`` (template names
as in ``status.path``, without ``{run_id}``: a batch asks about runs of one scope),
``method`` (POST: the ids go in the JSON body under ``ids``; GET: in the query
parameter ``ids``, comma-separated), ``runs`` (where the list of runs is in the answer), ``id``
(where each run's id is in a list element), ``wrap`` (where a list element sits in the single
status answer, so the ``status`` locations read it: ``"run"`` for ``{"run": {...}}``; empty
when the element is the whole answer) and ``max`` (the most ids the API takes in one request).
A run missing from the answer is checked alone.
"""

from __future__ import annotations

import re
import string
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError, ProtocolError, RunbridgeError
from ..http import Exchange, Request, Response
from ..models import LaunchSpec, RunRef, RunStatus, parse_time
from ..states import RunState
from ._parse import excerpt, ident, unreadable_launch
from .base import Provider

__all__ = ["RestProvider", "dig"]

_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
_STATUS_FIELDS = {
    "method",
    "path",
    "state",
    "url",
    "message",
    "outputs",
    "created_at",
    "updated_at",
    "ended_at",
}
_LAUNCH_FIELDS = {"method", "path", "id", "scope", "idempotency_header"}
_CANCEL_FIELDS = {"method", "path"}
_AUTH_FIELDS = {"header", "scheme"}
_BATCH_FIELDS = {"method", "path", "ids", "runs", "id", "wrap", "max"}


def dig(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` in decoded JSON, or None where it is absent."""
    if path in ("", "$", "."):
        return data
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and re.fullmatch(r"-?[0-9]+", part):
            index = int(part)
            data = data[index] if -len(data) <= index < len(data) else None
        else:
            return None
        if data is None:
            return None
    return data


def _template_names(template: str, field: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"rest provider: {field} is not a valid path template: {exc}") from None
    for name in names:
        if not name.isidentifier():
            raise ConfigError(f"rest provider: {field} uses {{{name}}}; names must be identifiers")
    return names


def _endpoint(value: Any, field: str, allowed: set[str], default_method: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"rest provider: {field} must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"rest provider: {field} has unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    config = dict(value)
    method = str(config.get("method", default_method)).upper()
    if method not in _METHODS:
        raise ConfigError(
            f"rest provider: {field}.method {config.get('method')!r} is not an HTTP method"
        )
    config["method"] = method
    path = config.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(
            f"rest provider: {field}.path must be a string starting with '/', got {path!r}"
        )
    config["names"] = _template_names(path, f"{field}.path")
    for key in allowed - {"method", "path", "scope", "body"}:
        if key in config and not isinstance(config[key], str):
            raise ConfigError(f"rest provider: {field}.{key} must be a string (a dotted JSON path)")
    return config


class RestProvider(Provider):
    """A generic provider for JSON run APIs, configured by mappings (see the module docs)."""

    name = "rest"
    supports_find = False

    def __init__(
        self,
        *,
        status: Mapping[str, Any] | None = None,
        states: Mapping[str, str] | None = None,
        launch: Mapping[str, Any] | None = None,
        cancel: Mapping[str, Any] | None = None,
        auth: Mapping[str, str] | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> None:
        if status is None:
            raise ConfigError(
                "rest provider: status is required (at least {'path': ..., 'state': ...})"
            )
        self.status_cfg = _endpoint(status, "status", _STATUS_FIELDS, "GET")
        if "state" not in self.status_cfg:
            raise ConfigError(
                "rest provider: status.state is required (where the state is in the JSON)"
            )
        if "run_id" not in self.status_cfg["names"]:
            raise ConfigError("rest provider: status.path must contain {run_id}")
        self.ref_scope = tuple(n for n in self.status_cfg["names"] if n != "run_id")
        if not isinstance(states, Mapping) or not states:
            raise ConfigError(
                "rest provider: states is required, a mapping of raw values to RunState names"
            )
        mapped: dict[str, RunState] = {}
        for raw, target in states.items():
            try:
                mapped[str(raw)] = RunState(str(target).upper())
            except ValueError:
                choices = ", ".join(s.value for s in RunState)
                raise ConfigError(
                    f"rest provider: states[{raw!r}] = {target!r} is not a RunState ({choices})"
                ) from None
        if not any(s.is_terminal for s in mapped.values()):
            raise ConfigError(
                "rest provider: states maps no value to a terminal state; a wait could never end"
            )
        self.states = mapped
        self.launch_cfg: dict[str, Any] | None = None
        if launch is not None:
            self.launch_cfg = _endpoint(launch, "launch", _LAUNCH_FIELDS, "POST")
            if "id" not in self.launch_cfg:
                raise ConfigError(
                    "rest provider: launch.id is required (where the new run's id is in the JSON)"
                )
            scope = self.launch_cfg.get("scope", [])
            if isinstance(scope, str) or not isinstance(scope, Sequence):
                raise ConfigError("rest provider: launch.scope must be a list of param names")
            missing = set(self.ref_scope) - set(scope)
            if missing:
                raise ConfigError(
                    f"rest provider: status.path needs {', '.join(sorted(missing))}; "
                    "list them in launch.scope so launched runs carry them"
                )
        self.cancel_cfg = (
            _endpoint(cancel, "cancel", _CANCEL_FIELDS, "POST") if cancel is not None else None
        )
        self.supports_launch = self.launch_cfg is not None
        self.supports_cancel = self.cancel_cfg is not None
        self.auth_cfg = {"header": "Authorization", "scheme": "Bearer"}
        if auth is not None:
            if not isinstance(auth, Mapping) or set(auth) - _AUTH_FIELDS:
                raise ConfigError(
                    f"rest provider: auth takes only {', '.join(sorted(_AUTH_FIELDS))}"
                )
            self.auth_cfg.update({k: str(v) for k, v in auth.items()})

        self.batch_cfg = self._batch_config(batch) if batch is not None else None
        self.max_batch = self.batch_cfg["max"] if self.batch_cfg is not None else 1

    def _batch_config(self, batch: Any) -> dict[str, Any]:
        if not isinstance(batch, Mapping):
            raise ConfigError(f"rest provider: batch must be a mapping, got {type(batch).__name__}")
        cfg = _endpoint(
            {k: v for k, v in batch.items() if k != "max"},
            "batch",
            _BATCH_FIELDS - {"max"},
            "POST",
        )
        if cfg["method"] not in ("GET", "POST"):
            raise ConfigError("rest provider: batch.method must be GET or POST")
        if "run_id" in cfg["names"]:
            raise ConfigError("rest provider: batch.path cannot use {run_id} (it asks for many)")
        missing = [n for n in self.ref_scope if n not in cfg["names"]]
        if missing:
            raise ConfigError(
                f"rest provider: batch.path must use {', '.join(missing)} as status.path does "
                "(a batch asks about runs of one scope)"
            )
        unknown = [n for n in cfg["names"] if n not in self.ref_scope]
        if unknown:
            raise ConfigError(
                f"rest provider: batch.path uses {', '.join(unknown)}, which status.path "
                "does not (a run reference carries only what status.path needs)"
            )
        for key in ("ids", "runs", "id"):
            if key not in cfg:
                raise ConfigError(f"rest provider: batch.{key} is required")
        cfg.setdefault("wrap", "")
        size = batch.get("max")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(
                f"rest provider: batch.max must be a positive integer (the API's limit), "
                f"got {size!r}"
            )
        cfg["max"] = size
        return cfg

    def auth_headers(self, token: str) -> dict[str, str]:
        scheme = self.auth_cfg.get("scheme", "")
        return {self.auth_cfg["header"]: f"{scheme} {token}" if scheme else token}

    @staticmethod
    def _fill(config: Mapping[str, Any], values: Mapping[str, Any], field: str) -> str:
        missing = [n for n in config["names"] if n not in values]
        if missing:
            raise ConfigError(f"rest provider: {field}.path needs {', '.join(missing)}")
        from urllib.parse import quote

        return str(config["path"]).format(
            **{n: quote(str(values[n]), safe="") for n in config["names"]}
        )

    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        if self.launch_cfg is None:
            return (yield from super().launch(spec))
        cfg = self.launch_cfg
        params = dict(spec.params)
        path = self._fill(cfg, params, "launch")
        body = (
            params["body"]
            if "body" in params
            else {k: v for k, v in params.items() if k not in cfg["names"]}
        )
        headers = {}
        retry = None
        if spec.key and cfg.get("idempotency_header"):
            headers[cfg["idempotency_header"]] = spec.key
            retry = True  # the platform de-duplicates on the key
        response: Response = yield Request(
            cfg["method"], path, json=body, headers=headers or None, retry=retry
        )
        data = self.decipher(response)  # an answer that is not JSON: a ProtocolError quoting it
        run_id = ident(dig(data, cfg["id"]))
        if run_id is None:
            raise unreadable_launch(
                self.name, f"has no run id at {cfg['id']!r} (a string or an integer)", response
            )
        scope = {name: str(params[name]) for name in cfg.get("scope", []) if name in params}
        return RunRef(self.name, run_id, scope)

    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        cfg = self.status_cfg
        response = yield Request(
            cfg["method"], self._fill(cfg, {**ref.scope, "run_id": ref.id}, "status")
        )
        return self.parse_status(ref, self.decipher(response))

    def status_many(
        self, refs: Sequence[RunRef]
    ) -> Exchange[dict[RunRef, RunStatus | RunbridgeError]]:
        cfg = self.batch_cfg
        if cfg is None:
            return (yield from super().status_many(refs))
        ids = [ref.id for ref in refs]
        path = self._fill(cfg, refs[0].scope, "batch")
        if cfg["method"] == "GET":
            request = Request("GET", path, params={cfg["ids"]: ",".join(ids)})
        else:
            request = Request("POST", path, json={cfg["ids"]: ids}, retry=True)
        response = yield request
        data = self.decipher(response)
        runs = dig(data, cfg["runs"])
        if not isinstance(runs, list):
            raise ProtocolError(
                f"rest: the batch answer has no list of runs at {cfg['runs']!r}: {excerpt(data)}"
            )
        by_id = {ref.id: ref for ref in refs}
        out: dict[RunRef, RunStatus | RunbridgeError] = {}
        for item in runs:
            run_id = ident(dig(item, cfg["id"]))
            ref = by_id.get(run_id) if run_id is not None else None
            if ref is None:
                continue  # a run not asked about: ignored
            wrapped = item
            for part in reversed([p for p in cfg["wrap"].split(".") if p]):
                wrapped = {part: wrapped}
            try:
                out[ref] = self.parse_status(ref, wrapped)
            except ProtocolError as exc:  # that run alone is unreadable: checked alone
                out[ref] = exc
        return out

    def batch_key(self, ref: RunRef) -> Hashable | None:
        if self.batch_cfg is None:
            return None
        return tuple(ref.scope.get(name, "") for name in self.batch_cfg["names"])

    def parse_status(self, ref: RunRef, data: Any) -> RunStatus:
        cfg = self.status_cfg
        raw = dig(data, cfg["state"])
        if isinstance(raw, (dict, list)) or raw is None:
            raise ProtocolError(
                f"rest: the status answer has no state at {cfg['state']!r} (a string or a "
                f"number): {excerpt(data)}"
            )

        def get(key: str) -> Any:
            return dig(data, cfg[key]) if key in cfg else None

        outputs = get("outputs")
        message = get("message")
        url = get("url")
        return RunStatus(
            ref=ref,
            state=self.map_state(raw),
            raw_state=str(raw),
            url=url if isinstance(url, str) and url else None,
            message=str(message) if message else None,
            outputs=outputs
            if isinstance(outputs, Mapping)
            else ({"value": outputs} if outputs is not None else {}),
            created_at=parse_time(get("created_at")),
            updated_at=parse_time(get("updated_at")),
            ended_at=parse_time(get("ended_at")),
        )

    def cancel(self, ref: RunRef) -> Exchange[None]:
        if self.cancel_cfg is None:
            return (yield from super().cancel(ref))
        cfg = self.cancel_cfg
        response = yield Request(
            cfg["method"], self._fill(cfg, {**ref.scope, "run_id": ref.id}, "cancel"), retry=True
        )
        self.decipher(response)
        return None
