"""runbridge: launch runs on external platforms and wait for their terminal state,
from Airflow, Prefect and Dagster.

>>> from runbridge import RunClient
>>> with RunClient("langgraph", "http://127.0.0.1:2024") as client:  # doctest: +SKIP
...     status = client.launch_and_wait({"assistant_id": "agent", "input": {}})

Importing runbridge imports no orchestrator.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .core import *  # noqa: F403
from .core import __all__ as _core_all

__all__ = ["__version__", *_core_all]
