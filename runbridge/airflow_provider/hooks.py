"""``RunbridgeHook``: an Airflow connection in, a runbridge client configuration out.

A ``runbridge`` connection holds:

* **Base URL** (the host field): ``https://api.example.com``. A bare host also works
  (``host``, ``port`` and ``schema`` as the path, with ``scheme`` in the extra, default https),
  which is what a connection URI such as
  ``runbridge://:TOKEN@api.example.com:8443/v1?platform=rest&scheme=https`` gives.
* **Token** (the password field, optional): sent the way the platform expects it.
* **Extra** (JSON): ``platform`` (required: ``langgraph``, ``rest``, ...), ``options`` (the
  platform's provider options, e.g. the ``rest`` provider's endpoint configuration or
  LangGraph's ``assistant_id``), and the client settings of
  :class:`~runbridge.core.config.ClientConfig`: ``request_timeout`` (seconds one HTTP request
  may take in all), ``retry`` (``RetryPolicy`` fields, e.g. ``{"attempts": 3}``), ``poll``
  (seconds between checks, or ``PollSchedule`` fields), ``poll_max_interval`` (the longest
  pause between two checks, core's ``poll.cap``; default 10), ``error_window`` (seconds of transient
  errors a wait tolerates) and ``max_body`` (bytes). Any other key is an error naming it.

The connection is read into one :class:`~runbridge.core.config.ClientConfig`, validated when it
is read (a ``ConfigError`` naming the connection and the field); the operator, the sensor and
the trigger ask that configuration for their clients. Nothing here knows a platform.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from ..core.config import ClientConfig
from ..core.errors import ConfigError
from ._common import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from ..core.client import AsyncRunClient, RunClient

__all__ = ["RunbridgeHook", "client_config"]

CONN_TYPE = "runbridge"
CLIENT_KEYS = (
    "options",
    "request_timeout",
    "retry",
    "poll",
    "poll_max_interval",
    "error_window",
    "max_body",
    "max_rps",
    "coalesce",
    "max_long_polls",
)
"""Extra keys that are :class:`ClientConfig` fields (platform, base URL and token have their own)."""
EXTRA_KEYS = ("platform", *CLIENT_KEYS, "scheme")
_JSON_OBJECTS = {"options": "provider options", "retry": "RetryPolicy fields"}


def client_config(conn: Connection) -> ClientConfig:
    """The :class:`ClientConfig` a ``runbridge`` connection describes, or ``ConfigError``
    naming the connection and what is wrong with it (never its token)."""
    conn_id = conn.conn_id
    token = conn.password or None
    try:
        extra = _extra(conn)
        platform = extra.get("platform")
        if not isinstance(platform, str) or not platform.strip():
            raise ConfigError(
                f"connection {conn_id!r} names no platform: set the extra "
                '{"platform": "<name>"} (for example "langgraph" or "rest")'
            )
        settings = {name: _value(extra, name, conn_id) for name in CLIENT_KEYS}
        data = {"platform": platform, "base_url": _base_url(conn, extra), "token": token}
        try:
            return ClientConfig.from_mapping({**data, **settings})
        except ConfigError as exc:
            raise ConfigError(f"connection {conn_id!r}: {exc}") from None
    except ConfigError as exc:
        if not token:
            raise
        from ..core.redact import Redactor

        # a value echoed from the connection may carry the token (pasted in the wrong field)
        raise ConfigError(Redactor([token]).text(str(exc))) from None


def _value(extra: Mapping[str, Any], name: str, conn_id: str) -> Any:
    """One client setting from the extra. A connection URI gives every value as text: JSON
    text is read (``5``, ``{"attempts": 3}``); other text is left for ClientConfig to refuse
    by name."""
    value = extra.get(name)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        if name in _JSON_OBJECTS:
            raise ConfigError(
                f"connection {conn_id!r}: extra {name!r} is not valid JSON "
                f"({_JSON_OBJECTS[name]} expected): {exc}"
            ) from None
        return value


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


_MASKER_MODULES = (
    "airflow.sdk._shared.secrets_masker.secrets_masker",
    "airflow._shared.secrets_masker.secrets_masker",
)
_SHORT_FLAG = "_has_warned_short_secret"


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: list[tuple[Any, Any]] = []


@contextlib.contextmanager
def _no_short_value_warning() -> Iterator[None]:
    """Read a connection without Airflow's "Skipping masking for a secret as it's too short"
    warning for the extra's *non-secret* values.

    Why it is needed: reading any connection, Airflow (3.3) walks the whole extra through its
    secrets masker (``Connection.get`` → ``SecretCache.save_connection_uri(conn.get_uri())`` →
    ``extra_dejson`` → ``mask_secret(dict)``), and ``SecretsMasker.add_mask`` checks a value's
    length before it checks whether the key names a secret, so ``"rest"`` or ``"POST"`` warn
    once in every task process, though they are never masked. runbridge's extra holds no
    secret (the token is the password field), so the warning only hides the real ones; the
    token's length is checked by :func:`_warn_short_token` instead. This sets the masker's
    private once-per-process flag (``SecretsMasker._has_warned_short_secret``) while reads are
    in progress (reads in several threads at once: the first sets it, the last restores it);
    pinned by ``tests/airflow/test_masking.py``, which fails if Airflow renames it.
    """
    global _quiet_depth
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved[:] = _set_short_flags()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for masker, before in _quiet_saved:
                    setattr(masker, _SHORT_FLAG, before)
                _quiet_saved.clear()


def _set_short_flags() -> list[tuple[Any, Any]]:
    """Set the flag on each secrets masker class Airflow has; return what it was."""
    import importlib

    saved: list[tuple[Any, Any]] = []
    for name in _MASKER_MODULES:
        try:
            masker = getattr(importlib.import_module(name), "SecretsMasker", None)
        except ImportError:
            continue
        if masker is not None and hasattr(masker, _SHORT_FLAG):
            saved.append((masker, getattr(masker, _SHORT_FLAG)))
            setattr(masker, _SHORT_FLAG, True)
    return saved


def _warn_short_token(conn: Connection) -> None:
    """Airflow does not mask a secret shorter than ``[logging] min_length_masked_secret``
    (default 5): say so for the token, naming the connection (never the value)."""
    token = conn.password or ""
    if not token:
        return
    try:
        from airflow.sdk import conf

        minimum = conf.getint("logging", "min_length_masked_secret", fallback=5)
    except Exception:
        minimum = 5
    if len(token) < minimum:
        import logging

        logging.getLogger(__name__).warning(
            "connection %r: the token is shorter than %d characters, so Airflow does not "
            "mask it in logs",
            conn.conn_id,
            minimum,
        )


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

    def client_config(self) -> ClientConfig:
        """The connection as a :class:`ClientConfig` (read now, validated)."""
        with _no_short_value_warning():
            conn = self.get_connection(self.runbridge_conn_id)
        _warn_short_token(conn)
        return client_config(conn)

    async def aclient_config(self) -> ClientConfig:
        """:meth:`client_config`, reading the connection without blocking the event loop."""
        with _no_short_value_warning():
            conn = await self.aget_connection(self.runbridge_conn_id)
        _warn_short_token(conn)
        return client_config(conn)

    def get_conn(self) -> RunClient:
        return self.get_client()

    def get_client(self, **overrides: Any) -> RunClient:
        """A new :class:`~runbridge.RunClient` for this connection (close it, or use ``with``).
        ``overrides`` are client arguments (``request_timeout``, ``retry``, ``hooks``...)."""
        return self.client_config().client(**overrides)

    async def get_async_client(self, **overrides: Any) -> AsyncRunClient:
        """A new :class:`~runbridge.AsyncRunClient` for this connection. Triggers share one per
        configuration and event loop instead (``runbridge.core.shared.shared_async_client``)."""
        return (await self.aclient_config()).async_client(**overrides)

    def test_connection(self) -> tuple[bool, str]:
        """Reach the platform with the connection's URL and token, and say what happened in one
        line (core's :meth:`ClientConfig.check_connection`): "Connected to ..." only when the
        platform's API gave an answer only it gives; a wrong base URL or path, a refused token
        or an unreachable host fail with what went wrong. Never shows the token."""
        from ..core.errors import RunbridgeError

        try:
            config = self.client_config()
        except RunbridgeError as exc:
            return False, f"Bad connection: {exc}"
        return config.check_connection()
