"""Values that cross every boundary: which run (``RunRef``), a snapshot of it (``RunStatus``)
and what to launch (``LaunchSpec``). Frozen, validated on construction, JSON round-trippable,
so orchestrators can keep them in XCom, trigger kwargs, Prefect results and Dagster metadata.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from .errors import ConfigError, RunFailed
from .states import DEFAULT_SUCCESS, RunState

__all__ = ["PLATFORM_NAME", "LaunchSpec", "RunRef", "RunStatus", "parse_time"]


def _frozen_mapping(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


PLATFORM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""What a platform name may be: letters, digits, ``_``, ``.``, ``-``, starting with a letter or
a digit. Nothing the string form uses as a separator (``:``, ``?``, ``/``), no whitespace."""


def _encodable(value: str, what: str) -> str:
    """``value`` if it can be written as UTF-8 (every str but one holding lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {value!r} is not valid Unicode (a lone surrogate)") from None
    return value


@dataclasses.dataclass(frozen=True)
class RunRef:
    """Which run: the platform's name, the run's id, and any scope the id needs.

    ``scope`` holds what else the platform needs to address the run (LangGraph's
    ``thread_id``, Flyte's project and domain, W&B's entity and project). Values are strings.

    What a RunRef accepts, so that every RunRef survives its string, dict and JSON forms:

    * ``platform``: a name matching :data:`PLATFORM_NAME` (``langgraph``, ``my-platform``,
      ``acme.jobs``): no ``:``, ``?``, ``/``, whitespace or control characters;
    * ``id``: any non-empty text; scope keys: any non-empty text; scope values: any text,
      empty included. They may hold ``?``, ``&``, ``=``, ``%``, ``/``, spaces, control
      characters and any Unicode: the string form percent-encodes them. Only strings that are
      not valid Unicode (lone surrogates, which have no UTF-8 form) are refused.

    Anything else is a :class:`ConfigError` at construction, never later.

    >>> ref = RunRef("langgraph", "run-1", {"thread_id": "t-1"})
    >>> RunRef.parse(ref.to_string()) == ref
    True
    """

    platform: str
    id: str
    scope: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.platform, str) or not self.platform:
            raise ConfigError("RunRef.platform must be a non-empty string")
        if not PLATFORM_NAME.fullmatch(self.platform):
            raise ConfigError(
                f"RunRef.platform {self.platform!r} is not a platform name: use letters, "
                "digits, '_', '.' and '-', starting with a letter or a digit"
            )
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError(f"RunRef.id must be a non-empty string, got {self.id!r}")
        _encodable(self.id, "RunRef.id")
        scope = _frozen_mapping(self.scope, "RunRef.scope")
        for key, value in scope.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"RunRef.scope keys must be non-empty strings, got {key!r}")
            if not isinstance(value, str):
                raise ConfigError(f"RunRef.scope[{key!r}] must be a string, got {value!r}")
            _encodable(key, "RunRef.scope key")
            _encodable(value, f"RunRef.scope[{key!r}]")
        object.__setattr__(self, "scope", dict(sorted(scope.items())))

    def __hash__(self) -> int:
        return hash((self.platform, self.id, tuple(self.scope.items())))

    def __str__(self) -> str:
        return self.to_string()

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "id": self.id, "scope": dict(self.scope)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRef:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run reference must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("platform", "id") if k not in data]
        if missing:
            raise ConfigError(
                f"run reference is missing {', '.join(missing)}: {_excerpt(dict(data))}"
            )
        platform, run_id, scope = data["platform"], data["id"], data.get("scope") or {}
        if not isinstance(scope, Mapping):
            raise ConfigError(f"run reference scope must be a mapping, got {_excerpt(scope)}")
        # numbers are ids too (some platforms use integers); None or "" is rejected by __init__
        if isinstance(run_id, int) and not isinstance(run_id, bool):
            try:
                run_id = str(run_id)
            except ValueError:  # more digits than Python will print
                raise ConfigError("run reference id is an integer too long to be an id") from None
        return cls(platform, run_id, dict(scope))

    def to_string(self) -> str:
        """``platform:id`` followed by ``?key=value&...`` for the scope, URL-quoted."""
        text = f"{self.platform}:{quote(self.id, safe='')}"
        if self.scope:
            text += "?" + urlencode(self.scope)
        return text

    @classmethod
    def parse(cls, text: str) -> RunRef:
        """Read the form :meth:`to_string` writes, or the JSON of :meth:`to_dict`.

        Strict: a percent-escape that is not UTF-8, a scope field without ``=`` or a scope key
        given twice is a :class:`ConfigError`, as is anything that is not a string.
        """
        if not isinstance(text, str):
            raise ConfigError(
                f"a run reference string must be a str, got {type(text).__name__}"
                + (" (decode bytes first)" if isinstance(text, (bytes, bytearray)) else "")
            )
        text = text.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except RecursionError:
                raise ConfigError("run reference JSON is nested too deeply") from None
            except ValueError as exc:  # JSONDecodeError, or an integer of too many digits
                raise ConfigError(f"run reference is not valid JSON: {exc}") from None
            return cls.from_dict(data)
        platform, sep, rest = text.partition(":")
        if not sep or not platform or not rest:
            raise ConfigError(
                f"cannot read run reference {_excerpt(text)}: "
                "expected 'platform:run_id[?key=value...]'"
            )
        run_id, _, query = rest.partition("?")
        try:
            run_id = unquote(run_id, errors="strict")
            pairs = (
                parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict")
                if query
                else []
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"cannot read run reference {_excerpt(text)}: {exc}") from None
        scope: dict[str, str] = {}
        for key, value in pairs:
            if key in scope:
                raise ConfigError(
                    f"cannot read run reference {_excerpt(text)}: scope key {key!r} given twice"
                )
            scope[key] = value
        return cls(platform, run_id, scope)

    @classmethod
    def coerce(cls, value: RunRef | Mapping[str, Any] | str) -> RunRef:
        """Accept a RunRef, its dict, its JSON, or its string form."""
        if isinstance(value, RunRef):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, str):
            return cls.parse(value)
        raise ConfigError(f"cannot make a run reference from {type(value).__name__}")


def _excerpt(value: Any, limit: int = 200) -> str:
    """A short ``repr`` of outside input for a message; never raises."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deeply; an int of too many digits
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_time(value: Any) -> datetime | None:
    """Parse a platform timestamp (ISO 8601 string, epoch seconds or ms) into an aware datetime.

    Returns None for None or an unreadable value: timestamps are informative, never fatal.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = value / 1000 if value > 1e11 else value
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):  # NaN, inf, out of range, a huge int
            return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """A snapshot of a run, as the platform reported it."""

    ref: RunRef
    state: RunState
    raw_state: str
    """The platform's own value, always kept."""
    url: str | None = None
    """The run's page on the platform, where it has one."""
    message: str | None = None
    """The platform's error or status message."""
    outputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Outputs, results, summary metrics: whatever the platform reports about the run."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    cancelled_by_runbridge: bool = False
    """True when runbridge cancelled this run itself (``run_timeout``), so a wrapper knows a
    retry should launch a new run; carried in the wait's result, not through side channels."""

    def __post_init__(self) -> None:
        if not isinstance(self.ref, RunRef):
            raise ConfigError("RunStatus.ref must be a RunRef")
        if not isinstance(self.state, RunState):
            try:
                object.__setattr__(self, "state", RunState(self.state))
            except (ValueError, TypeError):
                raise ConfigError(
                    f"RunStatus.state must be a RunState, got {_excerpt(self.state)}"
                ) from None
        if not isinstance(self.raw_state, str):
            raise ConfigError(
                f"RunStatus.raw_state must be a string, got {_excerpt(self.raw_state)}"
            )
        for name in ("url", "message"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(
                    f"RunStatus.{name} must be a string or None, got {_excerpt(value)}"
                )
        for name in ("created_at", "updated_at", "ended_at"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, datetime):
                raise ConfigError(
                    f"RunStatus.{name} must be a datetime or None, got {_excerpt(value)}"
                )
        if not isinstance(self.cancelled_by_runbridge, bool):
            raise ConfigError("RunStatus.cancelled_by_runbridge must be a boolean")
        object.__setattr__(self, "outputs", _frozen_mapping(self.outputs, "RunStatus.outputs"))

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    def succeeded(self, success: Collection[RunState] = DEFAULT_SUCCESS) -> bool:
        """True when the run ended in one of the ``success`` states."""
        return self.is_terminal and self.state in success

    def raise_for_state(self, success: Collection[RunState] = DEFAULT_SUCCESS) -> RunStatus:
        """Return self if the run succeeded; raise :class:`RunFailed` with the platform's message
        if it ended otherwise. A run still going is not a failure: it is returned as is."""
        if self.is_terminal and self.state not in success:
            detail = f": {self.message}" if self.message else ""
            raise RunFailed(
                f"{self.ref.platform} run {self.ref.id} ended {self.state.value}"
                f" ({self.raw_state}){detail}",
                status=self,
            )
        return self

    def summary(self) -> str:
        """One line for logs."""
        text = f"{self.ref.platform} run {self.ref.id}: {self.state.value} ({self.raw_state})"
        if self.message:
            text += f": {self.message}"
        if self.url:
            text += f" <{self.url}>"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref.to_dict(),
            "state": self.state.value,
            "raw_state": self.raw_state,
            "is_terminal": self.is_terminal,
            "url": self.url,
            "message": self.message,
            "outputs": dict(self.outputs),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "ended_at": _iso(self.ended_at),
            "cancelled_by_runbridge": self.cancelled_by_runbridge,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStatus:
        """Read :meth:`to_dict`'s form; anything else is a :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"not a serialized RunStatus: a {type(data).__name__}, not a mapping")
        missing = [key for key in ("ref", "state", "raw_state") if key not in data]
        if missing:
            raise ConfigError(f"not a serialized RunStatus: missing {', '.join(missing)}")
        try:
            state = RunState(data["state"])
        except (ValueError, TypeError):
            raise ConfigError(
                f"not a serialized RunStatus: state {_excerpt(data['state'])} is not a RunState"
            ) from None
        times: dict[str, datetime | None] = {}
        for name in ("created_at", "updated_at", "ended_at"):
            value = data.get(name)
            times[name] = parse_time(value)
            if value is not None and times[name] is None:
                raise ConfigError(
                    f"not a serialized RunStatus: {name} {_excerpt(value)} is not a timestamp"
                )
        cancelled = data.get("cancelled_by_runbridge", False)
        if not isinstance(cancelled, bool):
            raise ConfigError(
                f"not a serialized RunStatus: cancelled_by_runbridge {_excerpt(cancelled)} "
                "is not a boolean"
            )
        try:
            return cls(
                ref=RunRef.from_dict(data["ref"]),
                state=state,
                raw_state=data["raw_state"],
                url=data.get("url"),
                message=data.get("message"),
                outputs=data.get("outputs") or {},
                cancelled_by_runbridge=cancelled,
                **times,
            )
        except ConfigError as exc:
            raise ConfigError(f"not a serialized RunStatus: {exc}") from None


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """What to launch: platform-specific ``params`` and an optional idempotency ``key``.

    The key names the launch (e.g. derived from an Airflow task instance). Providers that
    can use it (a caller-chosen thread id or run name) make the launch safe to retry and let
    a later attempt find the run instead of starting a duplicate.
    """

    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen_mapping(self.params, "launch params"))
        if self.key is not None and (not isinstance(self.key, str) or not self.key.strip()):
            raise ConfigError("the idempotency key must be a non-empty string")
