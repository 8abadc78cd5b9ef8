"""Sans-IO messages: what a provider yields (``Request``, ``Sleep``) and is sent (``Response``).

An *exchange* is a generator in the shape of httpx's ``Auth.auth_flow``: it yields a
``Request``, is sent back the ``Response``, may yield again, and returns its result::

    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        response = yield Request("GET", f"/runs/{ref.id}")
        return self.parse_status(ref, self.decipher(response))

A driver (``RunClient._drive`` / ``AsyncRunClient._drive``) is the only code that performs I/O
for it. When a request cannot be completed the driver *throws* the
:class:`~runbridge.core.errors.TransportError` into the generator at the ``yield``, so the
exchange decides what a failure means (a launch looks its run up; a wait backs off). Core
flows may also yield :class:`Sleep`; providers never do, and never read a clock.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator, Mapping
from datetime import datetime
from typing import Any, TypeVar, Union

from .errors import ConfigError, ProtocolError

__all__ = ["Exchange", "Request", "Response", "Save", "Sleep", "Step"]

T = TypeVar("T")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """One HTTP request, relative to the client's base URL."""

    method: str
    path: str
    params: Mapping[str, str | int | float | bool] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    content: bytes | None = None
    timeout: float | None = None
    """The most this request may take in all (connect, send, every byte of the answer); None
    uses the client's ``request_timeout``. The flow lowers it to what is left of the
    operation's deadline before the request is sent. For a long poll: how long to hold it."""
    limit: float | None = None
    """What is left of the operation's deadline when the flow hands the request over (None:
    no deadline). A driver that queues requests (for an in-flight slot, or the request
    budget's turn) bounds the queueing by ``timeout`` and then gives the exchange itself up
    to ``timeout`` again, never past ``limit``: a request that waited for its turn is not cut
    off mid-exchange (which closes its connection), and an operation still ends by its
    deadline. A driver that does not queue treats ``timeout`` as the whole bound."""
    retry: bool | None = None
    """May the driver resend it after a retryable failure? None: only idempotent methods."""
    long_poll: bool = False
    """A blocking call (join, watch): the server holds it open until the run ends or a limit."""

    def __post_init__(self) -> None:
        method = self.method.upper()
        if method not in _METHODS:
            raise ConfigError(f"unsupported HTTP method {self.method!r}")
        object.__setattr__(self, "method", method)
        if not self.path.startswith("/"):
            raise ConfigError(f"request path must start with '/', got {self.path!r}")
        if self.json is not None and self.content is not None:
            raise ConfigError("a request has either json or content, not both")

    @property
    def retryable(self) -> bool:
        return self.method in _IDEMPOTENT if self.retry is None else self.retry

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


@dataclasses.dataclass(frozen=True, eq=False)
class Response:
    """What the driver sends back into the exchange. Header names are lower case."""

    status_code: int
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    content: bytes = b""
    request: Request | None = None
    received_at: datetime | None = None
    """When the driver received it (wall clock), for reading an HTTP-date ``Retry-After``
    without a provider reading a clock."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The decoded JSON body; a body that is not JSON raises ProtocolError."""
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            where = f" to {self.request.method} {self.request.path}" if self.request else ""
            excerpt = self.text[:200]
            raise ProtocolError(
                f"response{where} (HTTP {self.status_code}) is not valid JSON: {exc}; "
                f"body starts {excerpt!r}"
            ) from None

    def __repr__(self) -> str:
        return f"<Response {self.status_code}>"


@dataclasses.dataclass(frozen=True)
class Sleep:
    """Ask the driver to pause (used by core flows for backoff and poll intervals)."""

    seconds: float
    reason: str = ""
    wake: Any = None
    """A RunRef whose pushed update (see ``runbridge.core.inbox``) may end the sleep early;
    the driver then sends the delivered status back into the flow."""


@dataclasses.dataclass(frozen=True)
class Save:
    """Ask the driver to hand ``record`` (a ``planner.LaunchRecord``) to the caller's record
    store before the flow goes on (a launch is recorded before and after it happens)."""

    record: Any


Step = Union[Request, Sleep, Save]  # noqa: UP007 (a runtime alias on Python 3.10)
Exchange = Generator[Request, Response, T]
"""A provider operation: yields requests, is sent responses, returns ``T``."""
Flow = Generator[Step, Any, T]
"""A core operation: yields requests and sleeps."""
