"""Typed getters for outside input: a platform's JSON answer is data of any shape.

Every provider reads answers through these, so that a field of the wrong type becomes None (or
empty) instead of an AttributeError, TypeError, ValueError or OverflowError deep in a parser,
and a launch answer it cannot read becomes a :class:`ProtocolError` that quotes the answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..errors import ProtocolError
from ..http import Response

__all__ = [
    "excerpt",
    "ident",
    "integer",
    "items",
    "mapping",
    "number",
    "text",
    "unreadable_launch",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
"""(read-only: one empty mapping shared by every caller)"""


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else _EMPTY


def items(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """``value`` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def ident(value: Any) -> str | None:
    """An id: a non-empty string, or an integer (some APIs number their runs), else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # more digits than Python prints
            return None
    return None


def integer(value: Any) -> int | None:
    """An integer, or a float or string holding one (``"42"``, ``3.0``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and len(value) <= 40:
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def number(value: Any) -> float | None:
    """A finite float from a number, else None (a huge integer is not a float either)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def excerpt(value: Any, limit: int = 200) -> str:
    """A short, one-line rendering of outside input for an error message; never raises.

    Bytes and ``Response`` bodies are decoded leniently; decoded JSON is re-encoded compactly.
    """
    if isinstance(value, Response):
        value = value.content
    if isinstance(value, (bytes, bytearray)):
        shown = bytes(value[: limit * 4]).decode("utf-8", errors="replace")
        rendered = repr(shown) if shown else "an empty body"
    else:
        try:
            rendered = json.dumps(value, ensure_ascii=False, default=repr)
        except (RecursionError, ValueError, TypeError):
            rendered = f"<a {type(value).__name__}>"
    return rendered if len(rendered) <= limit else rendered[: limit - 3] + "..."


def unreadable_launch(
    platform: str, problem: str, response: Response, *, run_id: str | None = None
) -> ProtocolError:
    """The error for a 2xx launch answer the provider cannot read.

    ``problem`` says what is wrong (``"has no run id at 'run.id'"``); the message adds what the
    answer held (an excerpt) and, where the provider could still read one, the run id it names.
    The launch flow treats it like a lost answer.
    """
    found = f"; it names run {run_id!r}" if run_id else ""
    return ProtocolError(
        f"{platform}: the launch answer (HTTP {response.status_code}) {problem}; "
        f"it held {excerpt(response)}{found}"
    )
