"""runbridge: launch runs on external platforms and wait for their terminal state,
from Airflow, Prefect and Dagster.

>>> from runbridge import RunClient
>>> with RunClient("langgraph", "http://127.0.0.1:2024") as client:  # doctest: +SKIP
...     status = client.launch_and_wait({"assistant_id": "agent", "input": {}})

Importing runbridge imports no orchestrator, and nothing else until a name is used: Airflow
imports ``runbridge.airflow_provider.get_provider_info`` in every process, which must stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .core import *  # noqa: F403

_CORE_NAMES = frozenset(
    {
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
        "ClientConfig",
        "Execution",
        "LaunchRecord",
        "Started",
        "Save",
        "retryable",
        "shared_async_client",
        "available",
        "create_provider",
        "get_provider_class",
        "parse_retry_after",
        "parse_states",
        "register",
    }
)

__all__ = ["__version__", *sorted(_CORE_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _CORE_NAMES:
        from . import core

        value = getattr(core, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'runbridge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CORE_NAMES})
