"""runbridge.core: runs and platforms, no orchestrator. The public names are listed here."""

from __future__ import annotations

from types import GenericAlias

from .client import AsyncRunClient, RunClient
from .config import ClientConfig
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
    retryable,
)
from .flows import Event, WaitOptions
from .http import Exchange, Request, Response, Save, Sleep
from .inbox import Inbox
from .models import LaunchSpec, RunRef, RunStatus
from .planner import Execution, LaunchRecord, Started
from .providers.base import Provider
from .registry import available, create_provider, get_provider_class, register
from .schedule import PollSchedule, RetryPolicy, parse_retry_after
from .shared import shared_async_client
from .states import DEFAULT_SUCCESS, TERMINAL, RunState, parse_states

__all__ = [
    "DEFAULT_SUCCESS",
    "TERMINAL",
    "AsyncRunClient",
    "AuthError",
    "BadRequest",
    "ClientConfig",
    "ConfigError",
    "Conflict",
    "Event",
    "Exchange",
    "Execution",
    "Inbox",
    "LaunchRecord",
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
    "Save",
    "Sleep",
    "Started",
    "TransportError",
    "WaitOptions",
    "WaitTimeout",
    "available",
    "create_provider",
    "get_provider_class",
    "parse_retry_after",
    "parse_states",
    "register",
    "retryable",
    "shared_async_client",
]

for _name in __all__:
    _obj = globals()[_name]
    # a class, not a generic alias such as Exchange (which 3.10 also calls a type)
    if isinstance(_obj, type) and not isinstance(_obj, GenericAlias):
        _obj.__module__ = "runbridge"
del _name, _obj
