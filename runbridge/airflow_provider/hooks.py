"""``RunbridgeHook``: an Airflow connection in, a runbridge client out.

A ``runbridge`` connection holds:

* **Base URL** (the host field): ``https://api.example.com``. A bare host also works
  (``host``, ``port`` and ``schema`` as the path, with ``scheme`` in the extra, default https),
  which is what a connection URI such as
  ``runbridge://:TOKEN@api.example.com:8443/v1?platform=rest&scheme=https`` gives.
* **Token** (the password field, optional): sent the way the platform expects it.
* **Extra** (JSON): ``platform`` (required: ``langgraph``, ``rest``, ...), ``options`` (the
  platform's provider options, e.g. the ``rest`` provider's endpoint configuration or
  LangGraph's ``assistant_id``), ``timeout`` (seconds per HTTP request) and ``retry``
  (``RetryPolicy`` fields for each request, e.g. ``{"attempts": 3}``).

Nothing here knows a platform: the connection is turned into core's
:class:`~runbridge.RunClient` / :class:`~runbridge.AsyncRunClient`, which do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from ..core.errors import ConfigError
from ._common import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from ..core.client import AsyncRunClient, RunClient

__all__ = ["ConnectionSettings", "RunbridgeHook"]

CONN_TYPE = "runbridge"
EXTRA_KEYS = ("platform", "options", "timeout", "retry", "scheme")


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    """What a ``runbridge`` connection says, validated. The token never shows in its repr."""

    conn_id: str
    platform: str
    base_url: str
    token: str | None = dataclasses.field(default=None, repr=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    timeout: float | None = None
    retry: Mapping[str, Any] | None = None
    """``RetryPolicy`` fields for each request (attempts, total, first, cap, ...)."""

    @classmethod
    def from_connection(cls, conn: Connection) -> ConnectionSettings:
        conn_id = conn.conn_id
        extra = _extra(conn)
        platform = extra.get("platform")
        if not isinstance(platform, str) or not platform.strip():
            raise ConfigError(
                f"connection {conn_id!r} names no platform: set the extra "
                '{"platform": "<name>"} (for example "langgraph" or "rest")'
            )
        options = _object(extra, "options", conn_id, f"{platform} provider options")
        retry = _object(extra, "retry", conn_id, "RetryPolicy fields") or None
        if retry is not None:
            from ..core.schedule import RetryPolicy

            try:
                RetryPolicy(**retry)
            except TypeError as exc:
                raise ConfigError(f"connection {conn_id!r}: extra 'retry': {exc}") from None
        timeout = extra.get("timeout")
        if timeout in (None, ""):
            timeout = None
        else:
            try:
                timeout = float(timeout)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"connection {conn_id!r}: extra 'timeout' must be a number of seconds, "
                    f"got {timeout!r}"
                ) from None
        return cls(
            conn_id=conn_id,
            platform=platform.strip(),
            base_url=_base_url(conn, extra),
            token=conn.password or None,
            options=options,
            timeout=timeout,
            retry=retry,
        )

    def _kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.options)
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        if self.retry is not None:
            from ..core.schedule import RetryPolicy

            kwargs["retry"] = RetryPolicy(**self.retry)
        kwargs.update(overrides)
        return kwargs

    def client(self, **overrides: Any) -> RunClient:
        from ..core.client import RunClient

        return RunClient(self.platform, self.base_url, self.token, **self._kwargs(overrides))

    def async_client(self, **overrides: Any) -> AsyncRunClient:
        from ..core.client import AsyncRunClient

        return AsyncRunClient(self.platform, self.base_url, self.token, **self._kwargs(overrides))

    def fingerprint(self) -> str:
        """A digest of everything that shapes a client (the token included, never shown), so a
        changed connection gets a new client."""
        text = json.dumps(
            [self.platform, self.base_url, self.token, self.options, self.timeout, self.retry],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _object(extra: Mapping[str, Any], name: str, conn_id: str, what: str) -> dict[str, Any]:
    """An extra field holding a JSON object (or its JSON text, as a connection URI gives it)."""
    value = extra.get(name) or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError(
                f"connection {conn_id!r}: extra {name!r} is not valid JSON: {exc}"
            ) from None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"connection {conn_id!r}: extra {name!r} must be a JSON object of {what}, "
            f"got {type(value).__name__}"
        )
    return dict(value)


def _extra(conn: Connection) -> dict[str, Any]:
    """The extra as a dict, reading both plain keys and the UI's ``extra__runbridge__`` form."""
    raw = conn.extra
    if not raw:
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except ValueError as exc:
        raise ConfigError(f"connection {conn.conn_id!r}: extra is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"connection {conn.conn_id!r}: extra must be a JSON object")
    out: dict[str, Any] = {}
    unknown = []
    prefix = f"extra__{CONN_TYPE}__"
    for key, value in data.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name not in EXTRA_KEYS:
            unknown.append(key)
        elif value not in (None, "") or name not in out:
            out[name] = value
    if unknown:
        raise ConfigError(
            f"connection {conn.conn_id!r}: unknown extra field(s) {', '.join(sorted(unknown))}; "
            f"a runbridge connection takes {', '.join(EXTRA_KEYS)} "
            "(platform options go inside 'options')"
        )
    return out


def _base_url(conn: Connection, extra: Mapping[str, Any]) -> str:
    host = (conn.host or "").strip()
    if not host:
        raise ConfigError(
            f"connection {conn.conn_id!r} has no base URL: set the host field to the "
            "platform's API URL, e.g. https://api.example.com"
        )
    if host.startswith(("http://", "https://")):
        url = host.rstrip("/")
        if conn.port and url.count(":") == 1:  # no port in the URL itself
            scheme, _, rest = url.partition("://")
            name, slash, path = rest.partition("/")
            url = f"{scheme}://{name}:{conn.port}{slash}{path}"
    else:
        scheme = str(extra.get("scheme") or "https").lower()
        if scheme not in ("http", "https"):
            raise ConfigError(
                f"connection {conn.conn_id!r}: extra 'scheme' must be http or https, got {scheme!r}"
            )
        url = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    if conn.schema:
        url = url.rstrip("/") + "/" + quote(conn.schema.strip("/"), safe="/")
    return url


class RunbridgeHook(BaseHook):
    """Turns a ``runbridge`` connection into a :class:`~runbridge.RunClient` (for operators and
    sensors) or an :class:`~runbridge.AsyncRunClient` (for triggers).

    >>> with RunbridgeHook("my_platform").get_client() as client:  # doctest: +SKIP
    ...     status = client.get("rest:run-1")

    :param runbridge_conn_id: the connection id (default ``runbridge_default``).
    """

    conn_name_attr = "runbridge_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Runbridge"

    def __init__(self, runbridge_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runbridge_conn_id = runbridge_conn_id

    def __repr__(self) -> str:
        return f"<RunbridgeHook {self.runbridge_conn_id}>"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form's field behaviour (the same as ``get_provider_info``'s)."""
        from .get_provider_info import UI_FIELD_BEHAVIOUR

        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    def settings(self) -> ConnectionSettings:
        return ConnectionSettings.from_connection(self.get_connection(self.runbridge_conn_id))

    async def asettings(self) -> ConnectionSettings:
        conn = await self.aget_connection(self.runbridge_conn_id)
        return ConnectionSettings.from_connection(conn)

    def get_conn(self) -> RunClient:
        return self.get_client()

    def get_client(self, **overrides: Any) -> RunClient:
        """A new :class:`~runbridge.RunClient` for this connection (close it, or use ``with``).
        ``overrides`` are client arguments (``timeout``, ``retry``, ``hooks``...)."""
        return self.settings().client(**overrides)

    async def get_async_client(self, **overrides: Any) -> AsyncRunClient:
        """A new :class:`~runbridge.AsyncRunClient` for this connection. Triggers share one per
        connection instead (see :mod:`runbridge.airflow_provider.triggers`)."""
        return (await self.asettings()).async_client(**overrides)

    def test_connection(self) -> tuple[bool, str]:
        """Reach the platform with the connection's URL and token, and say what happened.

        Lists one run where the platform's API can; otherwise looks up a run that does not
        exist, which answers "not found" once the URL and the token are right.
        """
        from ..core.errors import (
            AuthError,
            BadRequest,
            NotSupported,
            RunbridgeError,
            RunNotFound,
        )
        from ..core.schedule import RetryPolicy

        try:
            settings = self.settings()
        except RunbridgeError as exc:
            return False, f"Bad connection: {exc}"
        where = f"{settings.platform} at {settings.base_url}"
        try:
            with settings.client(retry=RetryPolicy.none(), timeout=10.0) as client:
                try:
                    client.list(limit=1)
                    return True, f"Connected to {where}: listing runs works."
                except NotSupported:
                    pass
                probe = {key: "runbridge-connection-test" for key in client.provider.ref_scope}
                try:
                    client.get(client.ref("runbridge-connection-test", **probe))
                except (RunNotFound, BadRequest) as exc:
                    return True, (
                        f"Connected to {where}: it answered a lookup of a run that does not "
                        f"exist as expected ({type(exc).__name__})."
                    )
                return True, f"Connected to {where}."
        except AuthError as exc:
            return False, f"{where} refused the token: {exc}"
        except RunbridgeError as exc:
            return False, f"Could not use {where}: {exc}"
