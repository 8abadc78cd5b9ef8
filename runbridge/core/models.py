"""Values that cross every boundary: which run (``RunRef``), a snapshot of it (``RunStatus``)
and what to launch (``LaunchSpec``). Frozen, validated on construction, JSON round-trippable,
so orchestrators can keep them in XCom, trigger kwargs, Prefect results and Dagster metadata.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from .errors import ConfigError, RunFailed
from .states import DEFAULT_SUCCESS, RunState

__all__ = ["LaunchSpec", "RunRef", "RunStatus", "parse_time"]


def _frozen_mapping(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


@dataclasses.dataclass(frozen=True)
class RunRef:
    """Which run: the platform's name, the run's id, and any scope the id needs.

    ``scope`` holds what else the platform needs to address the run (LangGraph's
    ``thread_id``, Flyte's project and domain, W&B's entity and project). Values are strings.

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
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError(f"RunRef.id must be a non-empty string, got {self.id!r}")
        scope = _frozen_mapping(self.scope, "RunRef.scope")
        for key, value in scope.items():
            if not isinstance(value, str):
                raise ConfigError(f"RunRef.scope[{key!r}] must be a string, got {value!r}")
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
            raise ConfigError(f"run reference is missing {', '.join(missing)}: {dict(data)!r}")
        platform, run_id, scope = data["platform"], data["id"], data.get("scope") or {}
        if not isinstance(scope, Mapping):
            raise ConfigError(f"run reference scope must be a mapping, got {scope!r}")
        # numbers are ids too (some platforms use integers); None or "" is rejected by __init__
        run_id = str(run_id) if isinstance(run_id, int) and not isinstance(run_id, bool) else run_id
        return cls(platform, run_id, dict(scope))

    def to_string(self) -> str:
        """``platform:id`` followed by ``?key=value&...`` for the scope, URL-quoted."""
        text = f"{self.platform}:{quote(self.id, safe='')}"
        if self.scope:
            text += "?" + urlencode(self.scope)
        return text

    @classmethod
    def parse(cls, text: str) -> RunRef:
        """Read the form :meth:`to_string` writes, or the JSON of :meth:`to_dict`."""
        text = text.strip()
        if text.startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"run reference is not valid JSON: {exc}") from None
        platform, sep, rest = text.partition(":")
        if not sep or not platform or not rest:
            raise ConfigError(
                f"cannot read run reference {text!r}: expected 'platform:run_id[?key=value...]'"
            )
        run_id, _, query = rest.partition("?")
        from urllib.parse import unquote

        return cls(platform, unquote(run_id), dict(parse_qsl(query, keep_blank_values=True)))

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


def parse_time(value: Any) -> datetime | None:
    """Parse a platform timestamp (ISO 8601 string, epoch seconds or ms) into an aware datetime.

    Returns None for None or an unreadable value: timestamps are informative, never fatal.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):  # NaN, inf, out of range
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

    def __post_init__(self) -> None:
        if not isinstance(self.ref, RunRef):
            raise ConfigError("RunStatus.ref must be a RunRef")
        if not isinstance(self.state, RunState):
            object.__setattr__(self, "state", RunState(self.state))
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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStatus:
        try:
            return cls(
                ref=RunRef.from_dict(data["ref"]),
                state=RunState(data["state"]),
                raw_state=str(data["raw_state"]),
                url=data.get("url"),
                message=data.get("message"),
                outputs=data.get("outputs") or {},
                created_at=parse_time(data.get("created_at")),
                updated_at=parse_time(data.get("updated_at")),
                ended_at=parse_time(data.get("ended_at")),
            )
        except (KeyError, ValueError, TypeError) as exc:
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
