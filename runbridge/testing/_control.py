"""The emulators' control API: script timelines, inject faults and read the record from outside
the emulator's process (``runbridge emulate``, a deployment's tests).

Every emulator app serves it under the reserved prefix :data:`PREFIX` (no auth)::

    POST /_runbridge/scripts          {"scripts": [<script>...], "default": <script>}
    POST /_runbridge/faults           {"faults": [<fault>...]} | {"clear": true}
    GET  /_runbridge/record           runs, launches, cancels, faults met, requests
    POST /_runbridge/runs/{id}/cancel cancel a run as a user of the platform would
    POST /_runbridge/reset            forget runs, scripts, faults and requests

A ``<script>`` has the fields of :class:`~runbridge.testing.Script`; its states are the
platform's raw states or the generic words of :data:`GENERIC_WORDS`, which each platform maps
(``Emulator.script_words``). A ``<fault>`` has the fields of :class:`~runbridge.testing.Fault`;
``"on": "launch" | "status" | "cancel"`` names the platform's request of that kind instead of a
method and a path (``Emulator.fault_targets``). Bad input is a 400 naming the field.

This module holds the parsing (shared by the HTTP handler and the ``emulate`` command's
``--script``/``--fault`` options); the handler itself is ``Emulator._control``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._emulator import Emulator, Fault, RecordedRequest, Script

__all__ = [
    "FAULT_FIELDS",
    "GENERIC_WORDS",
    "PREFIX",
    "SCRIPT_FIELDS",
    "ControlError",
    "parse_faults",
    "parse_scripts",
    "route",
]

PREFIX = "/_runbridge/"
"""The reserved path prefix of the control API."""

GENERIC_WORDS = ("queued", "running", "success", "failed", "cancelled", "unknown")
"""Platform-independent script states; ``unknown`` is a raw state the provider does not know."""

SCRIPT_FIELDS = ("steps", "final", "message", "outputs", "error_type")
FAULT_FIELDS = (
    "kind",
    "status",
    "retry_after",
    "seconds",
    "times",
    "method",
    "path",
    "when",
    "cut",
    "ok_only",
    "on",
)
FAULT_KINDS = ("status", "drop", "delay", "malformed", "truncate", "garble")
FAULT_TARGETS = ("launch", "status", "cancel")
MAX_SECONDS = 24 * 3600.0
"""The longest step or delay accepted (a day): longer is surely a mistake."""


class ControlError(ValueError):
    """Bad control input: ``field`` names where (``scripts[0].steps[1]``), the text says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(text: str | bytes) -> Any:
    """Strict JSON (no NaN or Infinity, which no platform answer could carry), or a
    :class:`ControlError`."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ControlError("", f"the body is not valid JSON ({reason[:120]})") from None


def route(method: str, pattern: str) -> Callable[[RecordedRequest], bool]:
    """A fault target: requests with this method whose path matches ``pattern`` (a regex)."""
    compiled = re.compile(pattern)

    def matches(request: RecordedRequest) -> bool:
        return request.method == method and compiled.search(request.path) is not None

    return matches


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(value: Any, field: str, *, low: float = 0.0, high: float = MAX_SECONDS) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError(field, f"must be a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ControlError(field, f"must be between {low:g} and {high:g}, got {value!r}")
    return number


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(field, f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise ControlError(field, f"must be between {low} and {high}, got {value}")
    return value


def _text(value: Any, field: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ControlError(field, f"must be a string, got {_kind(value)}")
    return value


def _object(value: Any, field: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ControlError(field, f"must be a JSON object, got {_kind(value)}")
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise ControlError(
            f"{field}.{unknown[0]}" if field else unknown[0],
            f"unknown field{'s' if len(unknown) > 1 else ''} {names}; known: {', '.join(known)}",
        )
    return value


def state_word(emulator: Emulator, value: Any, field: str) -> str:
    """A script state: a generic word mapped by the platform, or one of its raw states."""
    if not isinstance(value, str):
        raise ControlError(field, f"must be a state (a string), got {_kind(value)}")
    words = emulator.script_words
    if value in words:
        mapped = words[value]
        if mapped is None:
            raise ControlError(field, f"{emulator.platform} cannot carry the state {value!r}")
        return mapped
    if value in emulator.raw_states:
        return value
    generic = ", ".join(w for w in GENERIC_WORDS if words.get(w) is not None)
    raw = ", ".join(sorted(emulator.raw_states))
    raise ControlError(
        field,
        f"unknown state {value!r} for {emulator.platform}; use a generic word ({generic}) "
        f"or a raw state ({raw})",
    )


def parse_script(emulator: Emulator, value: Any, field: str) -> Script:
    from ._emulator import Script

    given = _object(value, field, SCRIPT_FIELDS)
    steps: list[tuple[str, float]] = []
    raw_steps = given.get("steps", [])
    if not isinstance(raw_steps, list):
        raise ControlError(
            f"{field}.steps", f"must be a list of [state, seconds], got {_kind(raw_steps)}"
        )
    if len(raw_steps) > 1000:
        raise ControlError(f"{field}.steps", "at most 1000 steps")
    for i, step in enumerate(raw_steps):
        where = f"{field}.steps[{i}]"
        if not isinstance(step, list) or len(step) != 2:
            raise ControlError(where, f"must be a [state, seconds] pair, got {_kind(step)}")
        steps.append((state_word(emulator, step[0], where), _number(step[1], where)))
    final = state_word(emulator, given.get("final", "success"), f"{field}.final")
    outputs = given.get("outputs")
    if outputs is not None and not isinstance(outputs, dict):
        raise ControlError(
            f"{field}.outputs", f"must be a JSON object or null, got {_kind(outputs)}"
        )
    return Script(
        steps,
        final=final,
        message=_text(given.get("message"), f"{field}.message"),
        outputs=outputs,
        error_type=_text(given.get("error_type"), f"{field}.error_type"),
    )


def parse_scripts(emulator: Emulator, body: Any) -> tuple[list[Script], Script | None]:
    """``{"scripts": [...], "default": {...}}`` -> (queued scripts, new default or None)."""
    given = _object(body, "", ("scripts", "default"))
    if "scripts" not in given and "default" not in given:
        raise ControlError("scripts", "give 'scripts' (a list) or 'default' (a script), or both")
    listed = given.get("scripts", [])
    if not isinstance(listed, list):
        raise ControlError("scripts", f"must be a list of scripts, got {_kind(listed)}")
    if len(listed) > 10_000:
        raise ControlError("scripts", "at most 10000 scripts at once")
    scripts = [parse_script(emulator, item, f"scripts[{i}]") for i, item in enumerate(listed)]
    default = given.get("default")
    return scripts, (parse_script(emulator, default, "default") if default is not None else None)


def parse_fault(emulator: Emulator, value: Any, field: str) -> Fault:
    from ._emulator import Fault

    given = _object(value, field, FAULT_FIELDS)
    kind = given.get("kind", "status")
    if kind not in FAULT_KINDS:
        raise ControlError(
            f"{field}.kind", f"must be one of {', '.join(FAULT_KINDS)}, got {kind!r}"
        )
    when = given.get("when", "before")
    if when not in ("before", "after"):
        raise ControlError(f"{field}.when", f"must be 'before' or 'after', got {when!r}")
    if kind in ("truncate", "garble") and when != "after":
        raise ControlError(f"{field}.when", f"a {kind!r} fault needs the real answer: 'after'")
    retry_after = given.get("retry_after")
    if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
        retry_after = str(_number(retry_after, f"{field}.retry_after", high=1e12))
    on = given.get("on")
    if on is not None:
        if on not in FAULT_TARGETS:
            raise ControlError(
                f"{field}.on", f"must be one of {', '.join(FAULT_TARGETS)}, got {on!r}"
            )
        if on not in emulator.fault_targets:
            raise ControlError(f"{field}.on", f"{emulator.platform} has no {on} request")
    method = _text(given.get("method"), f"{field}.method")
    if method is not None and not re.fullmatch(r"[A-Za-z]{1,16}", method):
        raise ControlError(f"{field}.method", f"not an HTTP method: {method!r}")
    ok_only = given.get("ok_only", False)
    if not isinstance(ok_only, bool):
        raise ControlError(f"{field}.ok_only", f"must be true or false, got {_kind(ok_only)}")
    return Fault(
        kind=kind,
        status=_integer(given.get("status", 503), f"{field}.status", 100, 599),
        retry_after=_text(retry_after, f"{field}.retry_after"),
        seconds=_number(given.get("seconds", 0.0), f"{field}.seconds"),
        times=_integer(given.get("times", 1), f"{field}.times", 1, 1_000_000),
        method=method.upper() if method else None,
        path=_text(given.get("path"), f"{field}.path"),
        when=when,
        cut=_number(given.get("cut", 0.5), f"{field}.cut", high=1.0),
        ok_only=ok_only,
        on=on,
    )


def parse_faults(emulator: Emulator, body: Any) -> tuple[list[Fault], bool]:
    """``{"faults": [...]}`` and/or ``{"clear": true}`` -> (faults to add, clear first?)."""
    given = _object(body, "", ("faults", "clear"))
    if "faults" not in given and "clear" not in given:
        raise ControlError("faults", "give 'faults' (a list) or 'clear': true")
    clear = given.get("clear", False)
    if not isinstance(clear, bool):
        raise ControlError("clear", f"must be true or false, got {_kind(clear)}")
    listed = given.get("faults", [])
    if not isinstance(listed, list):
        raise ControlError("faults", f"must be a list of faults, got {_kind(listed)}")
    if len(listed) > 10_000:
        raise ControlError("faults", "at most 10000 faults at once")
    return [parse_fault(emulator, item, f"faults[{i}]") for i, item in enumerate(listed)], clear


def fault_json(fault: Fault) -> dict[str, Any]:
    return dataclasses.asdict(fault)


def script_targets(targets: Mapping[str, Any]) -> list[str]:
    return [name for name in FAULT_TARGETS if name in targets]
