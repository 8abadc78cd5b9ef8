"""A run's status as Dagster metadata: typed values, generically, with no platform knowledge.

Fixed keys describe the run (``run_url`` as a URL, ``run_ref``, ``platform``, ``state``,
``raw_state``, ``message``, ``cancelled_by_runbridge`` (when runbridge cancelled it for
``run_timeout``), ``duration_seconds``, ``created_at``, ``ended_at``); the platform's
outputs (a W&B run summary, Lume row counts, a LangGraph thread's values) follow under
``output/<name>``, each typed by its value: numbers as int or float (so Dagster plots them
across materializations), booleans, strings (URLs as URLs), lists as JSON. Nested mappings are
flattened into dotted names (``output/metadata.results.input_rows``) down to ``MAX_DEPTH``
levels, so a number deep in an output is still a number; deeper ones are kept as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import dagster as dg

from ..core import RunStatus

__all__ = ["OUTPUT_PREFIX", "metadata_value", "status_metadata"]

OUTPUT_PREFIX = "output/"
MAX_OUTPUTS = 200
"""Outputs beyond this many are left out (and counted in ``outputs_omitted``)."""
MAX_DEPTH = 4
"""Levels of nested mappings flattened into dotted names."""
MAX_TEXT = 20_000
"""Longer strings and JSON documents are cut to this many characters, as text."""


def _clip(text: str) -> dg.MetadataValue:
    if len(text) <= MAX_TEXT:
        return dg.MetadataValue.text(text)
    return dg.MetadataValue.text(text[:MAX_TEXT] + f"... ({len(text) - MAX_TEXT} more characters)")


def metadata_value(value: Any) -> dg.MetadataValue:
    """The typed Dagster metadata value for one output value."""
    if value is None:
        return dg.MetadataValue.null()
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return (
            dg.MetadataValue.int(value) if abs(value) < 2**63 else dg.MetadataValue.text(str(value))
        )
    if isinstance(value, float):
        return (
            dg.MetadataValue.float(value)
            if math.isfinite(value)
            else dg.MetadataValue.text(str(value))
        )
    if isinstance(value, str):
        if value.startswith(("http://", "https://")) and not any(c.isspace() for c in value):
            return dg.MetadataValue.url(value)
        return _clip(value)
    if isinstance(value, datetime):
        return dg.MetadataValue.timestamp(value)
    if isinstance(value, (Mapping, list, tuple)):
        try:
            text = json.dumps(value, default=str, allow_nan=False)
        except (TypeError, ValueError):
            return _clip(repr(value))
        if len(text) > MAX_TEXT:
            return _clip(text)
        return dg.MetadataValue.json(json.loads(text))
    return _clip(str(value))


def status_metadata(
    status: RunStatus, *, observed_seconds: float | None = None
) -> dict[str, dg.MetadataValue]:
    """Dagster metadata for a run's status (terminal or not).

    ``duration_seconds`` comes from the platform's own timestamps when it reports them, else
    from ``observed_seconds`` (how long the step saw the run go).
    """
    metadata: dict[str, dg.MetadataValue] = {}
    if status.url:
        metadata["run_url"] = dg.MetadataValue.url(status.url)
    metadata["run_ref"] = dg.MetadataValue.text(status.ref.to_string())
    metadata["platform"] = dg.MetadataValue.text(status.ref.platform)
    metadata["state"] = dg.MetadataValue.text(status.state.value)
    metadata["raw_state"] = dg.MetadataValue.text(status.raw_state)
    if status.message:
        metadata["message"] = _clip(status.message)
    if status.cancelled_by_runbridge:
        metadata["cancelled_by_runbridge"] = dg.MetadataValue.bool(True)
    duration = None
    if status.created_at is not None and status.ended_at is not None:
        duration = (status.ended_at - status.created_at).total_seconds()
    elif observed_seconds is not None:
        duration = observed_seconds
    if duration is not None and duration >= 0:
        metadata["duration_seconds"] = dg.MetadataValue.float(round(duration, 3))
    if status.created_at is not None:
        metadata["created_at"] = dg.MetadataValue.timestamp(status.created_at)
    if status.ended_at is not None:
        metadata["ended_at"] = dg.MetadataValue.timestamp(status.ended_at)
    outputs = list(_flatten(status.outputs, OUTPUT_PREFIX, MAX_DEPTH))
    for name, value in outputs[:MAX_OUTPUTS]:
        metadata[name] = metadata_value(value)
    if len(outputs) > MAX_OUTPUTS:
        metadata["outputs_omitted"] = dg.MetadataValue.int(len(outputs) - MAX_OUTPUTS)
    return metadata


def _flatten(values: Mapping[str, Any], prefix: str, depth: int) -> Iterator[tuple[str, Any]]:
    for name, value in values.items():
        if isinstance(value, Mapping) and value and depth > 0:
            yield from _flatten(value, f"{prefix}{name}.", depth - 1)
        else:
            yield f"{prefix}{name}", value
