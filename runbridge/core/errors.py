"""One exception hierarchy, split by whose fault it is (as h11 does).

::

    RunbridgeError
    ├── ConfigError (also ValueError)        the caller asked for something impossible
    │   └── NotSupported                     the platform has no such operation
    ├── TransportError                       the network failed: connect, read, timeout, reset
    ├── PlatformError                        the platform answered with an error status
    │   ├── BadRequest        400, 422       (never retried)
    │   ├── AuthError         401, 403       (never retried)
    │   ├── RunNotFound       404            (never retried)
    │   ├── Conflict          409            (never retried)
    │   ├── RateLimited       429            (retried, honouring Retry-After)
    │   └── PlatformUnavailable  408, 5xx    (retried)
    ├── ProtocolError                        the platform answered something we cannot read
    │                                        (retried: a proxy's garbled page passes)
    ├── LaunchUncertain                      a launch may or may not have created a run
    ├── WaitTimeout                          the wait deadline passed; carries the last status
    └── RunFailed                            a terminal state that is not a success; carries it

Retryability is decided here once: :func:`retryable` (the ``retryable`` attribute of the
class, which an instance may override). It is what a request's retry loop, a wait's
transient-error window and a wrapper's "is this worth another try" all read. Messages never
contain secrets: the client redacts every answer where it enters runbridge (see
``runbridge.core.redact``), so nothing made from it can carry a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .models import RunStatus

__all__ = [
    "AuthError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "LaunchUncertain",
    "NotSupported",
    "PlatformError",
    "PlatformUnavailable",
    "ProtocolError",
    "RateLimited",
    "RunFailed",
    "RunNotFound",
    "RunbridgeError",
    "TransportError",
    "WaitTimeout",
    "error_for_status",
    "retryable",
]


class RunbridgeError(Exception):
    """Base of every error runbridge raises."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(RunbridgeError, ValueError):
    """The caller's configuration or input is invalid; the message names the field."""


class NotSupported(ConfigError):
    """The platform offers no such operation over its API (e.g. cancel)."""


class TransportError(RunbridgeError):
    """The request did not complete: connection refused or reset, read or connect timeout."""

    retryable = True

    def __init__(self, message: str, *, sent: bool | None = None, timeout: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        """False when the request surely never reached the server (connect failed)."""
        self.timeout = timeout


class PlatformError(RunbridgeError):
    """The platform answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        platform: str,
        status_code: int,
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.platform = platform
        self.status_code = status_code
        self.request_id = request_id
        self.body = body
        """A redacted excerpt of the response body."""

    def __str__(self) -> str:
        text = f"{self.platform}: HTTP {self.status_code}: {self.message}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text


class BadRequest(PlatformError):
    """400/422: the platform rejected the request's content."""


class AuthError(PlatformError):
    """401/403: missing, wrong or insufficient credentials."""


class RunNotFound(PlatformError):
    """404: no such run (or thread, project, job...)."""


class Conflict(PlatformError):
    """409: the request conflicts with the platform's state (e.g. a run already in flight)."""


class RateLimited(PlatformError):
    """429: too many requests."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class PlatformUnavailable(PlatformError):
    """408 or 5xx: the platform failed or is overloaded; worth trying again."""

    retryable = True


class ProtocolError(RunbridgeError):
    """The platform answered, but not in a shape the provider understands (a truncated or
    garbled body, a proxy's error page, a field of the wrong type, an answer over the size cap).

    Retryable by default: a garbled answer is usually a passing fault of the network or a
    proxy; an answer too large to read is not (``retryable=False``)."""

    retryable = True

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable  # type: ignore[misc]


class LaunchUncertain(RunbridgeError):
    """A launch request failed in a way that may have created a run anyway.

    Raised instead of blindly retrying, which could start a duplicate external run.
    Launch with an idempotency key (``key=``) on a platform that supports one so that
    runbridge can look the run up and retry safely.
    """

    def __init__(
        self,
        message: str,
        *,
        cause: RunbridgeError,
        key: str | None = None,
        answer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.key = key
        """The launch's idempotency key (runbridge's automatic one included): what to look
        for on the platform, or to launch again with where the platform deduplicates by it."""
        self.answer = answer
        """What the platform's answer held, when it answered something unreadable (an excerpt)."""


class WaitTimeout(RunbridgeError):
    """The wait's deadline passed before the run ended. The run keeps going."""

    def __init__(self, message: str, *, last_status: RunStatus | None) -> None:
        super().__init__(message)
        self.last_status = last_status


class RunFailed(RunbridgeError):
    """The run ended in a state that the caller's policy does not count as success."""

    def __init__(self, message: str, *, status: RunStatus) -> None:
        super().__init__(message)
        self.status = status


_BY_STATUS: dict[int, type[PlatformError]] = {
    400: BadRequest,
    401: AuthError,
    403: AuthError,
    404: RunNotFound,
    408: PlatformUnavailable,
    409: Conflict,
    422: BadRequest,
    429: RateLimited,
}


def error_for_status(status_code: int) -> type[PlatformError]:
    """The error class for an HTTP error status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return PlatformUnavailable
    return BadRequest if 400 <= status_code < 500 else PlatformError


def retryable(exc: BaseException) -> bool:
    """Whether trying the same thing again may succeed: the one retry classification."""
    return isinstance(exc, RunbridgeError) and bool(exc.retryable)
