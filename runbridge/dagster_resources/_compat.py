"""Every Dagster name runbridge uses outside Dagster's public API, in one place, pinned.

Dagster marks its public API with ``@public`` (and the top-level ``dagster`` namespace). The
step's record store (launch records in the event log, read back by a retry or a re-execution:
see ``_step.py``) needs four things that API does not offer, in every Dagster the ``dagster``
extra accepts (1.11 to 1.13):

* **writing an engine event of the step, with metadata**: ``DagsterEvent.engine_event`` (a
  static method of the public ``DagsterEvent`` class, not itself ``@public``) and
  ``EngineEventData`` (importable only from ``dagster._core.events``);
* **the step's key** (``op``, ``graph.op``, ``op[mapping_key]``), the identity records are kept
  under: ``OpExecutionContext.get_step_execution_context().step.key`` (``op_handle`` is not
  ``@public`` either);
* **reading a run's event log**: ``DagsterInstance.all_logs(run_id, of_type=...)``;
* **reading an engine event's metadata**: ``DagsterEvent.engine_event_data``.

The public events a step may log (``context.log_event``) are about assets
(``AssetMaterialization``, ``AssetObservation``) or data quality (``ExpectationResult``): an op
has no asset to observe, and a launch record is not a data-quality check, so recording launches
with them would invent assets or show each launch as a passed "expectation". Run tags
(``add_run_tags``) are not ``@public`` either, and hold one value per run, not a step's history.
Where a public mechanism fits, it is used: the run's URL of an asset step is an
``AssetObservation`` (``context.log_event``), the final metadata is the output's or the
materialization's.

tests/dagster/test_private_api.py checks each name here against the installed Dagster: the
signatures runbridge calls, and records written by real steps (a plain op, an op in a graph, a
mapped op, an asset) and read back. Run it against a Dagster release before claiming it
(docs/dagster.md lists the releases it passed on). A Dagster that breaks one of these names
fails that test, not a user's run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.events import EngineEventData  # private: see the module docstring

__all__ = ["engine_event_metadata", "step_key", "step_log", "write_engine_event"]


def step_key(context: dg.OpExecutionContext) -> str:
    """The key of the step ``context`` belongs to (``op``, ``graph.op``, ``op[mapping]``)."""
    return str(context.get_step_execution_context().step.key)


def write_engine_event(
    context: dg.OpExecutionContext, message: str, metadata: Mapping[str, dg.MetadataValue]
) -> None:
    """Write an engine event of the step, with ``metadata``, to the run's event log."""
    dg.DagsterEvent.engine_event(
        context.get_step_execution_context(), message, EngineEventData(metadata=dict(metadata))
    )


def step_log(
    instance: dg.DagsterInstance, run_id: str, of_type: set[dg.DagsterEventType]
) -> Sequence[dg.EventLogEntry]:
    """A run's event log entries of the given types, oldest first."""
    return instance.all_logs(run_id, of_type=of_type)


def engine_event_metadata(event: dg.DagsterEvent) -> Mapping[str, dg.MetadataValue]:
    """The metadata of an engine event."""
    return event.engine_event_data.metadata
