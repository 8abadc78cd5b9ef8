"""runbridge for Apache Airflow 3.3+: a hook, an operator, a sensor, a trigger and an extra
link (see docs/airflow.md).

>>> from runbridge.airflow_provider import LaunchRunOperator, RunSensor  # doctest: +SKIP

Names are imported on first use, so ``import runbridge.airflow_provider`` (what a DAG file
does at parse time) costs next to nothing beyond ``airflow.sdk``; the triggerer-side module
(``triggers``) is imported only when a task defers. Imports neither prefect nor dagster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hooks import RunbridgeHook
    from .links import RunPageLink
    from .operators import LaunchRunOperator
    from .sensors import RunSensor
    from .triggers import RunTrigger

__all__ = [
    "LaunchRunOperator",
    "RunPageLink",
    "RunSensor",
    "RunTrigger",
    "RunbridgeHook",
]

_WHERE = {
    "RunbridgeHook": "hooks",
    "LaunchRunOperator": "operators",
    "RunSensor": "sensors",
    "RunTrigger": "triggers",
    "RunPageLink": "links",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
