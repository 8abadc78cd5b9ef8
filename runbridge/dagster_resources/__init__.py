"""Dagster integration: a resource, op and asset factories, and a sensor.

>>> import dagster as dg
>>> from runbridge.dagster_resources import ExternalRunResource, external_run_asset
>>> report = external_run_asset(name="report", params={"job": "nightly"})
>>> defs = dg.Definitions(
...     assets=[report],
...     resources={"external_run": ExternalRunResource(
...         platform="langgraph", base_url="http://127.0.0.1:2024", token=dg.EnvVar("TOKEN"))},
... )

* :class:`ExternalRunResource`: platform, URL, token, request and poll settings, which build
  core's ``ClientConfig`` (``client_config()``); ``get_client()`` returns a core
  ``RunClient``; ``launch``/``get``/``wait``/``cancel``/``launch_and_wait``;
  ``run(context, params)`` for your own op and asset bodies.
* :func:`external_run_op`, :func:`external_run_asset`: launch and wait, with the run's URL,
  states, duration and outputs as metadata; ``dg.Failure`` when the run does not succeed;
  retries and re-executions re-attach (core's one policy, records in Dagster's event log);
  terminating the Dagster run cancels the external run (``cancel_on_kill``). Per-run
  options: :class:`ExternalRunConfig`.
* :func:`external_run_sensor`: a ``RunRequest`` per external run that ends, exactly once.

Needs the ``dagster`` extra. See docs/dagster.md.
"""

from __future__ import annotations

from ._factories import ExternalRunConfig, external_run_asset, external_run_op
from ._metadata import metadata_value, status_metadata
from ._resource import ExternalRunResource
from ._sensor import SensorCursor, external_run_sensor, run_request_for
from ._step import ExternalRunResult

__all__ = [
    "ExternalRunConfig",
    "ExternalRunResource",
    "ExternalRunResult",
    "SensorCursor",
    "external_run_asset",
    "external_run_op",
    "external_run_sensor",
    "metadata_value",
    "run_request_for",
    "status_metadata",
]
