"""The normalized run lifecycle.

Every platform has its own status strings; each provider maps them onto :class:`RunState`
with a plain dict at the top of its module and keeps the raw value in
``RunStatus.raw_state``. Deciding "is it finished, and did it succeed?" happens here and
only here, so every wrapper (Airflow operator, sensor and trigger; Prefect; Dagster)
answers it the same way.

Values that do not fit the common lifecycle are mapped deliberately by each provider:

* ``PARTIAL``: finished, with part of the work failed (Lume ``PARTIAL_FAILED``). Terminal; not a
  success unless the caller's policy accepts it.
* ``UNKNOWN``: a raw value the provider does not know. Never terminal, so a new vendor
  state cannot end (or crash) a wait; it is logged once per platform and value.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "ACTIVE",
    "DEFAULT_SUCCESS",
    "TERMINAL",
    "RunState",
    "parse_states",
]


class RunState(str, enum.Enum):
    """Where a run is in its life, the same for every platform."""

    PENDING = "PENDING"
    """Accepted, not started yet: queued, waiting for resources, initializing."""
    RUNNING = "RUNNING"
    """Doing its work (including states on the way to an end, such as "preempting")."""
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    PARTIAL = "PARTIAL"
    """Finished with part of the work failed."""
    UNKNOWN = "UNKNOWN"
    """The platform reported a value the provider does not know; treated as still going."""

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL: frozenset[RunState] = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT, RunState.PARTIAL}
)
"""States after which a run never changes again."""

ACTIVE: frozenset[RunState] = frozenset(RunState) - TERMINAL

DEFAULT_SUCCESS: frozenset[RunState] = frozenset({RunState.SUCCEEDED})
"""Which terminal states count as success unless the caller says otherwise."""


def parse_states(values: Iterable[str | RunState] | str | RunState) -> frozenset[RunState]:
    """Turn user input (``"succeeded,partial"``, ``["SUCCEEDED"]``) into a set of terminal states.

    Raises :class:`~runbridge.core.errors.ConfigError` naming the bad value.
    """
    from .errors import ConfigError

    if isinstance(values, (str, RunState)):
        values = [v for v in str(values).split(",") if v.strip()]
    out: set[RunState] = set()
    for value in values:
        name = str(value).strip().upper()
        try:
            state = RunState(name)
        except ValueError:
            allowed = ", ".join(s.value for s in sorted(TERMINAL, key=lambda s: s.value))
            raise ConfigError(f"unknown run state {value!r}; expected one of {allowed}") from None
        if state not in TERMINAL:
            raise ConfigError(f"{state.value} is not a terminal state and cannot count as success")
        out.add(state)
    if not out:
        raise ConfigError("success states must name at least one terminal state")
    return frozenset(out)
