"""One client configuration, built by every wrapper.

The Airflow connection, the Prefect credentials block and the Dagster resource each describe
the same thing: which platform, where, with which token and options, and how its requests and
waits behave. :class:`ClientConfig` is that thing, validated once here; each wrapper only maps
its own fields onto it (``ClientConfig.from_mapping`` reads the JSON form they store) and asks
it for a client::

    config = ClientConfig("langgraph", "https://agents.example.com", token="...",
                          request_timeout=20, error_window=300)
    with config.client() as client: ...
    async with shared_async_client(config) as client: ...   # see runbridge.core.shared

Every default is visible here. The token never appears in a repr, and ``fingerprint()`` is a
digest (the token included) that tells two configurations apart without showing either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError
from .schedule import PollSchedule, RetryPolicy, seconds

if TYPE_CHECKING:
    from .client import AsyncRunClient, RunClient

__all__ = [
    "DEFAULT_ERROR_WINDOW",
    "DEFAULT_MAX_BODY",
    "DEFAULT_REQUEST_TIMEOUT",
    "POLL_MAX_INTERVAL",
    "ClientConfig",
    "check_base_url",
    "seconds",
]

POLL_MAX_INTERVAL = "poll_max_interval"
"""The flat setting (connection field, block and resource field) for ``poll.cap``."""
DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds one HTTP request may take in all (connect, send, every byte of the answer)."""
DEFAULT_ERROR_WINDOW = 600.0
"""Seconds of transient errors (5xx, 429, network, unreadable answers) a wait tolerates."""
DEFAULT_MAX_BODY = 8 * 1024 * 1024
"""The largest response body read (bytes); a larger one is a ProtocolError naming its size."""
DEFAULT_COALESCE = 1.0
"""Seconds early a sleeping wait may be checked to share a batch going anyway (the hub)."""
DEFAULT_MAX_LONG_POLLS = 50
"""Blocking calls (joins, watches) one async client keeps open at most; the others poll."""


def check_base_url(value: Any) -> str:
    """``value`` as a base URL (no trailing slash), or ConfigError saying what is wrong.

    Checked when the configuration is made, so a URL that can never work (``http://``,
    ``http://[::1``, a port out of range) fails at once, not as a retried network error later.
    """
    if not isinstance(value, str):
        raise ConfigError(f"base_url must be a string, got {type(value).__name__}")
    text = value.strip()
    if text != value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise ConfigError(f"base_url must not contain spaces or control characters: {value!r}")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError when out of range or not a number
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"base_url {value!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"base_url must be an http:// or https:// URL, got {value!r}")
    if not host:
        raise ConfigError(f"base_url {value!r} names no host")
    if port == 0:
        raise ConfigError(f"base_url {value!r} has port 0")
    if parts.query or parts.fragment:
        raise ConfigError(f"base_url {value!r} must not have a query or fragment")
    return text.rstrip("/")


def without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part: what may go into a run page link.

    A base URL may carry credentials for the API (httpx sends them as Basic auth); a link built
    from it (W&B's app, LangGraph's Studio, Flyte's console) is shown to people and stored in
    XCom, artifacts and metadata, so it never carries them."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{name} must be a mapping with string keys, got {value!r}")
    return dict(value)


def _policy(cls: type[Any], value: Any, name: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    raise ConfigError(f"{name} must be a {cls.__name__} or a mapping of its fields, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Everything that shapes a client: what every wrapper builds from its own fields."""

    platform: str
    base_url: str
    token: str | None = dataclasses.field(default=None, repr=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The platform provider's options (see docs/platforms/)."""
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    poll: PollSchedule = dataclasses.field(default_factory=PollSchedule)
    error_window: float = DEFAULT_ERROR_WINDOW
    max_body: int = DEFAULT_MAX_BODY
    max_rps: float | None = None
    """Requests per second for all waits, launches and cancels of one async client (its hub's
    budget: every wait of a connection in a triggerer, a worker, a sensor shares it); None: no
    cap. A 429's Retry-After pauses the hub's checks whatever this is."""
    coalesce: float = DEFAULT_COALESCE
    """Seconds early the hub may check a sleeping wait so that it shares a batch request going
    anyway (and the longest a wait's first check is held for others); 0: never."""
    max_long_polls: int = DEFAULT_MAX_LONG_POLLS
    """Blocking calls (joins, watch streams) one async client keeps open at most; a wait beyond
    it polls on its own schedule (never noticing its run's end later than that allows)."""

    def __post_init__(self) -> None:
        if not isinstance(self.platform, str) or not self.platform.strip():
            raise ConfigError(f"platform must be a non-empty string, got {self.platform!r}")
        object.__setattr__(self, "platform", self.platform.strip())
        object.__setattr__(self, "base_url", check_base_url(self.base_url))
        if self.token is not None and not isinstance(self.token, str):
            raise ConfigError("token must be a string")
        object.__setattr__(self, "token", self.token or None)
        object.__setattr__(self, "options", _mapping(self.options, "options"))
        timeout = seconds(self.request_timeout, "request_timeout", positive=True)
        object.__setattr__(self, "request_timeout", timeout)
        window = seconds(self.error_window, "error_window")
        object.__setattr__(self, "error_window", window)
        object.__setattr__(self, "retry", _policy(RetryPolicy, self.retry, "retry"))
        object.__setattr__(self, "poll", _policy(PollSchedule, self.poll, "poll"))
        if isinstance(self.max_body, bool) or not isinstance(self.max_body, int):
            raise ConfigError(f"max_body must be a number of bytes, got {self.max_body!r}")
        if self.max_body < 1024:
            raise ConfigError(f"max_body must be at least 1024 bytes, got {self.max_body}")
        from .hub import HubOptions

        # max_rps: a positive finite number or None; coalesce: seconds >= 0 (else ConfigError)
        HubOptions(max_rps=self.max_rps, coalesce=self.coalesce)
        if self.max_rps is not None:
            object.__setattr__(self, "max_rps", float(self.max_rps))
        object.__setattr__(self, "coalesce", float(self.coalesce))
        polls = self.max_long_polls
        if isinstance(polls, bool) or not isinstance(polls, int) or polls < 0:
            raise ConfigError(f"max_long_polls must be an integer >= 0, got {polls!r}")
        # the provider checks its options now, not at the first request
        from .registry import create_provider

        create_provider(self.platform, **self.options)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ClientConfig:
        """From the JSON form the wrappers store (connection extras, block and resource
        fields): the field names above; ``poll`` may also be a number (a fixed interval) and
        ``retry`` / ``poll`` a mapping of their fields; ``poll_max_interval`` (seconds) is the
        cap of the poll schedule (``poll.cap``; default ``schedule.DEFAULT_POLL_CAP``), the
        setting every wrapper shows under that name. Unknown keys are an error."""
        data = _mapping(data, "client configuration")
        names = {f.name for f in dataclasses.fields(cls)} | {POLL_MAX_INTERVAL}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown client setting(s) {', '.join(unknown)}; expected {', '.join(sorted(names))}"
            )
        values = {k: v for k, v in data.items() if v is not None}
        poll = values.get("poll")
        cap = seconds(values.pop(POLL_MAX_INTERVAL, None), POLL_MAX_INTERVAL, positive=True)
        if isinstance(poll, (int, float)) and not isinstance(poll, bool):
            if cap is not None:
                raise ConfigError(
                    f"poll is a fixed interval ({poll!r} s); {POLL_MAX_INTERVAL} caps the "
                    "adaptive schedule: set one of them"
                )
            values["poll"] = PollSchedule.fixed(seconds(poll, "poll", positive=True) or 0.0)
        elif cap is not None:
            schedule = _policy(PollSchedule, poll, "poll") or PollSchedule()
            values["poll"] = dataclasses.replace(schedule, cap=cap, first=min(schedule.first, cap))
        for missing in ("platform", "base_url"):
            if missing not in values:
                raise ConfigError(f"the client configuration needs {missing}")
        return cls(**values)

    def to_mapping(self, *, token: bool = False) -> dict[str, Any]:
        """The JSON form (the token only if asked for)."""
        data: dict[str, Any] = {
            "platform": self.platform,
            "base_url": self.base_url,
            "options": dict(self.options),
            "request_timeout": self.request_timeout,
            "retry": dataclasses.asdict(self.retry),
            "poll": dataclasses.asdict(self.poll),
            "error_window": self.error_window,
            "max_body": self.max_body,
            "max_rps": self.max_rps,
            "coalesce": self.coalesce,
            "max_long_polls": self.max_long_polls,
        }
        if token:
            data["token"] = self.token
        return data

    def replace(self, **changes: Any) -> ClientConfig:
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """A digest of everything that shapes a client, the token included (never shown)."""
        text = json.dumps(self.to_mapping(token=True), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "request_timeout": self.request_timeout,
            "retry": self.retry,
            "poll": self.poll,
            "error_window": self.error_window,
            "max_body": self.max_body,
            **self.options,
        }

    def hub_kwargs(self) -> dict[str, Any]:
        """The async client's own settings (its hub's budget and bounds): the sync client has
        no hub."""
        return {
            "max_rps": self.max_rps,
            "coalesce": self.coalesce,
            "max_long_polls": self.max_long_polls,
        }

    def check_connection(self, *, timeout: float = 10.0) -> tuple[bool, str]:
        """Reach the platform with this URL and token, once, and say in one line what happened:
        ``(True, "Connected to ...")`` only when an answer only the platform's API gives came
        back (the provider's probe, ``runbridge.core.providers.probes``). Where the platform
        has no probe, a lookup of a run that does not exist must answer "not found", and the
        message says a wrong base path would answer the same. Never shows the token."""
        from .errors import (
            AuthError,
            BadRequest,
            PlatformError,
            ProtocolError,
            RunbridgeError,
            RunNotFound,
        )
        from .providers.probes import PROBE_ID, probe

        try:
            client = self.client(retry=RetryPolicy.none(), request_timeout=timeout)
        except RunbridgeError as exc:
            return False, f"Bad connection: {exc}"
        with client:
            where = client.redact(f"{self.platform} at {self.base_url}")
            provider = client.provider
            try:
                try:
                    exchange = probe(provider)
                    if exchange is not None:
                        proof = client._drive(client._flows().run(exchange))
                        return True, client.redact(f"Connected to {where}: {proof}.")
                except ConfigError:  # NotSupported too: the probe needs an option this
                    pass  # connection lacks (Vi's organization_id): look a run up instead
                scope = {key: PROBE_ID for key in provider.ref_scope}
                try:
                    client.get(client.ref(PROBE_ID, **scope))
                except RunNotFound as exc:
                    return True, client.redact(
                        f"Reached {where}: a lookup of a run that does not exist answered "
                        f"'not found' (HTTP {exc.status_code}), as it should; {self.platform} "
                        "has no answer that proves the base URL, so a wrong base path would "
                        "answer the same: check it if runs are not found later."
                    )
                return False, client.redact(
                    f"Could not use {where}: a run that should not exist was found "
                    "(wrong base URL?)"
                )
            except AuthError as exc:
                return False, client.redact(f"{where} refused the token: {exc}")
            except (ProtocolError, BadRequest, RunNotFound) as exc:  # probes.WrongAPI too
                return False, client.redact(f"Could not use {where} (wrong base URL?): {exc}")
            except ConfigError as exc:
                return False, client.redact(f"Bad connection: {exc}")
            except PlatformError as exc:
                hint = " (wrong base URL?)" if exc.status_code in (404, 405) else ""
                return False, client.redact(f"Could not use {where}{hint}: {exc}")
            except RunbridgeError as exc:
                return False, client.redact(f"Could not use {where}: {exc}")

    def client(self, **overrides: Any) -> RunClient:
        """A new :class:`~runbridge.RunClient`; ``overrides`` replace client arguments."""
        from .client import RunClient

        return RunClient(
            self.platform, self.base_url, self.token, **{**self.client_kwargs(), **overrides}
        )

    def async_client(self, **overrides: Any) -> AsyncRunClient:
        """A new :class:`~runbridge.AsyncRunClient` (for a shared one, see ``core.shared``)."""
        from .client import AsyncRunClient

        kwargs = {**self.client_kwargs(), **self.hub_kwargs(), **overrides}
        return AsyncRunClient(self.platform, self.base_url, self.token, **kwargs)
