"""runbridge.core: runs and platforms, no orchestrator. The public names are listed here.

Lazy (PEP 562), like ``runbridge`` itself: importing ``runbridge.core`` (or one of its light
modules, such as ``runbridge.core.models``, which imports this package first) loads nothing
else; each name's module is imported when the name is first used. An Airflow trigger module
imports ``runbridge.core.config`` and ``models`` at the triggerer's first import of it, on its
event loop: the HTTP stack (httpx, aiohttp, the client) is imported later, off the loop
(``runbridge.airflow_provider.triggers``), or when a name that needs it is used.
"""

from __future__ import annotations

import importlib
from types import GenericAlias
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - the names, for type checkers and IDEs
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

_WHERE: dict[str, str] = {
    "AsyncRunClient": "client",
    "RunClient": "client",
    "ClientConfig": "config",
    "AuthError": "errors",
    "BadRequest": "errors",
    "ConfigError": "errors",
    "Conflict": "errors",
    "LaunchUncertain": "errors",
    "NotSupported": "errors",
    "PlatformError": "errors",
    "PlatformUnavailable": "errors",
    "ProtocolError": "errors",
    "RateLimited": "errors",
    "RunbridgeError": "errors",
    "RunFailed": "errors",
    "RunNotFound": "errors",
    "TransportError": "errors",
    "WaitTimeout": "errors",
    "retryable": "errors",
    "Event": "flows",
    "WaitOptions": "flows",
    "Exchange": "http",
    "Request": "http",
    "Response": "http",
    "Save": "http",
    "Sleep": "http",
    "Inbox": "inbox",
    "LaunchSpec": "models",
    "RunRef": "models",
    "RunStatus": "models",
    "Execution": "planner",
    "LaunchRecord": "planner",
    "Started": "planner",
    "Provider": "providers.base",
    "available": "registry",
    "create_provider": "registry",
    "get_provider_class": "registry",
    "register": "registry",
    "PollSchedule": "schedule",
    "RetryPolicy": "schedule",
    "parse_retry_after": "schedule",
    "shared_async_client": "shared",
    "DEFAULT_SUCCESS": "states",
    "TERMINAL": "states",
    "RunState": "states",
    "parse_states": "states",
}
"""Each public name and the module (under runbridge.core) that defines it."""

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


def _public(value: Any) -> Any:
    # a class shows as runbridge.X (a class, not a generic alias such as Exchange, which 3.10
    # also calls a type)
    if isinstance(value, type) and not isinstance(value, GenericAlias):
        value.__module__ = "runbridge"
    return value


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'runbridge.core' has no attribute {name!r}")
    value = _public(getattr(importlib.import_module(f".{where}", __name__), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
