"""The provider protocol: one class per platform, no I/O.

A provider turns runbridge operations into HTTP exchanges (see :mod:`runbridge.core.http`)
and platform answers into :class:`RunRef` / :class:`RunStatus` or an error from
:mod:`runbridge.core.errors`. It never sleeps, never reads a clock and never touches a
socket, so one implementation serves the sync and the async client, and its tests feed it
canned responses.

What a provider must implement: ``status``. What it may: ``launch``, ``cancel`` (set
``supports_launch`` / ``supports_cancel``), ``join`` (a blocking wait endpoint), ``find``
(look a launch up by its idempotency key), ``status_many`` (many runs' statuses in one
request; set ``max_batch``), ``auth_headers``, ``error_message``.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar

from ..errors import (
    ConfigError,
    NotSupported,
    PlatformError,
    RateLimited,
    RunbridgeError,
    error_for_status,
)
from ..http import Exchange, Response
from ..models import LaunchSpec, RunRef, RunStatus
from ..schedule import parse_retry_after
from ..states import RunState

__all__ = ["Provider"]


class Provider(abc.ABC):
    """Base class of every platform provider. Subclasses take their options as keyword
    arguments to ``__init__`` and reject bad ones with :class:`ConfigError` naming the option."""

    name: ClassVar[str]
    """The registry name, e.g. ``"langgraph"``; also ``RunRef.platform``."""
    states: Mapping[str, RunState] = {}
    """The platform's raw state values and what they mean; documented in docs/platforms/."""
    ref_scope: tuple[str, ...] = ()
    """Scope keys a RunRef of this platform must carry (e.g. ``("thread_id",)``)."""
    base_url: str | None = None
    """The client's base URL, set by the client (for run page URLs); providers never connect."""
    supports_launch: bool = True
    supports_cancel: bool = True
    supports_find: bool = False
    """True when ``find(spec)`` can re-attach to a launch by its idempotency key."""
    new_id: Callable[[], str] = staticmethod(lambda: str(uuid.uuid4()))
    """Where a provider draws a fresh id (a thread or run id for a launch without a key); the
    client or a test may replace it, so providers stay deterministic under test."""
    auto_key: bool = False
    """True when a launch without a key is still made retry-safe by a random key (the
    provider uses it for a resource dedicated to this launch, e.g. a new thread)."""

    max_batch: int = 1
    """The most runs one ``status_many`` request may ask about (the platform's limit); 1 means
    the provider has no batch form and each run is checked alone."""

    # -- operations -------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        raise NotSupported(f"{self.name} runs cannot be launched over its API")

    @abc.abstractmethod
    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        """One snapshot of the run."""

    def status_many(
        self, refs: Sequence[RunRef]
    ) -> Exchange[dict[RunRef, RunStatus | RunbridgeError]]:
        """Snapshots of up to ``max_batch`` runs in one request (the hub's batch check).

        The answer maps each ref the platform answered about to its status, or to an error of
        that run alone (not found); a ref missing from it is checked alone by the hub. A
        failure of the whole request is raised, as ``status`` raises it."""
        raise NotSupported(f"{self.name} has no batch status request")
        yield  # pragma: no cover - makes this a generator

    def batch_key(self, ref: RunRef) -> Hashable | None:
        """Which batch this run may share: runs with equal keys may be asked about in one
        ``status_many`` (e.g. one project's runs); None: this run is checked alone."""
        return () if self.max_batch > 1 else None

    def cancel(self, ref: RunRef) -> Exchange[None]:
        raise NotSupported(f"{self.name} runs cannot be cancelled over its API")

    def list_runs(self, *, limit: int | None = 100, **filters: Any) -> Exchange[list[RunStatus]]:
        """Runs on the platform, newest first where it says, at most ``limit``."""
        raise NotSupported(f"{self.name} runs cannot be listed over its API")

    def join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus] | None:
        """A blocking wait (long poll) of at most ``timeout`` seconds, or None when the
        platform has none. The exchange returns a status, terminal or not."""
        return None

    def can_find(self, spec: LaunchSpec) -> bool:
        """Whether ``find`` can tell, for this launch, if it created a run."""
        return self.supports_find

    def find(self, spec: LaunchSpec) -> Exchange[RunRef | None]:
        """The run launched with ``spec`` (whose ``key`` is set), or None if there is none."""
        raise NotSupported(f"{self.name} cannot look a run up by idempotency key")

    # -- helpers subclasses use ----------------------------------------------------------
    def auth_headers(self, token: str) -> dict[str, str]:
        """Headers that carry the token. Default: a bearer token."""
        return {"Authorization": f"Bearer {token}"}

    def make_ref(self, run_id: str, **scope: str) -> RunRef:
        """A reference to an existing run, checked for the scope this platform needs."""
        return self.check_ref(RunRef(self.name, run_id, scope))

    def check_ref(self, ref: RunRef) -> RunRef:
        if ref.platform != self.name:
            raise ConfigError(
                f"run reference {ref} is for platform {ref.platform!r}, not {self.name!r}"
            )
        missing = [key for key in self.ref_scope if not ref.scope.get(key)]
        if missing:
            raise ConfigError(
                f"a {self.name} run reference needs {', '.join(missing)} in its scope; got {ref}"
            )
        return ref

    def map_state(self, raw: Any) -> RunState:
        """The RunState of a raw value; UNKNOWN (never terminal) for a value not in ``states``."""
        return self.states.get(str(raw), RunState.UNKNOWN) if raw is not None else RunState.UNKNOWN

    def error_message(self, body: Any) -> str | None:
        """The human message in an error body. Default: common JSON fields."""
        if isinstance(body, Mapping):
            for key in ("detail", "message", "error", "error_message", "msg"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return value
                if value:
                    return str(value)
        if isinstance(body, str) and body:
            return body
        return None

    def decipher(self, response: Response) -> Any:
        """The JSON of a successful response (None for an empty body), or the error it means."""
        if response.ok:
            if not response.content.strip():
                return None
            return response.json()
        raise self.error_for(response)

    def error_for(self, response: Response) -> PlatformError:
        try:
            body: Any = response.json() if response.content.strip() else None
        except Exception:
            body = response.text
        message = self.error_message(body) or f"HTTP {response.status_code}"
        cls = error_for_status(response.status_code)
        common: dict[str, Any] = {
            "platform": self.name,
            "status_code": response.status_code,
            "request_id": response.headers.get("x-request-id"),
            "body": response.text[:500],
        }
        if cls is RateLimited:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), response.received_at
            )
            return RateLimited(message, retry_after=retry_after, **common)
        return cls(message, **common)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
