"""runbridge.core: runs and platforms, no orchestrator. The public names are listed here."""

from __future__ import annotations

from .client import AsyncRunClient, RunClient
from .errors import (
    AuthError,
    BadRequest,
    ConfigError,
    Conflict,
    LaunchUncertain,
    NotSupported,
    PlatformError,
    PlatformUnavailable,
    ProtocolError,
    RateLimited,
    RunbridgeError,
    RunFailed,
    RunNotFound,
    TransportError,
    WaitTimeout,
)
from .flows import Event, WaitOptions
from .http import Exchange, Request, Response, Sleep
from .inbox import Inbox
from .models import LaunchSpec, RunRef, RunStatus
from .providers.base import Provider
from .registry import available, create_provider, get_provider_class, register
from .schedule import PollSchedule, RetryPolicy, parse_retry_after
from .states import DEFAULT_SUCCESS, TERMINAL, RunState, parse_states

__all__ = [
    "DEFAULT_SUCCESS",
    "TERMINAL",
    "AsyncRunClient",
    "AuthError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Event",
    "Exchange",
    "Inbox",
    "LaunchSpec",
    "LaunchUncertain",
    "NotSupported",
    "PlatformError",
    "PlatformUnavailable",
    "PollSchedule",
    "ProtocolError",
    "Provider",
    "RateLimited",
    "Request",
    "Response",
    "RetryPolicy",
    "RunClient",
    "RunFailed",
    "RunNotFound",
    "RunRef",
    "RunState",
    "RunStatus",
    "RunbridgeError",
    "Sleep",
    "TransportError",
    "WaitOptions",
    "WaitTimeout",
    "available",
    "create_provider",
    "get_provider_class",
    "parse_retry_after",
    "parse_states",
    "register",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "runbridge"
del _name, _obj
