"""Conditions on a run's results, such as ``"val_loss < 0.2"``, read without ``eval``.

A pipeline often needs more than "the run finished": it needs "the run finished *and* its
validation loss is below 0.2". A condition is ``KEY OP VALUE``::

    val_loss < 0.2          accuracy >= 0.9          epoch == 10
    eval.f1 > 0.8           "val loss" <= 1e-3       status != "diverged"
    best/model.ok == true   history.2 < 5            loss > -inf

* ``KEY`` names a value in a mapping (a W&B run summary, a result dict). Dots go into nested
  mappings (``eval.f1``) and lists (``history.2``); a key that itself contains dots is found
  too, the longest literal key winning. Quote a key that contains spaces or operator characters.
* ``OP`` is one of ``<  <=  >  >=  ==  !=``. Ordering operators need numbers on both sides;
  ``==`` and ``!=`` also compare strings, booleans and null.
* ``VALUE`` is a number (``0.2``, ``-3``, ``1e-3``, ``inf``, ``nan``), ``true``/``false``,
  ``null``/``none``, or a quoted string. A bare word is refused: ``val_loss < O.2`` is a typo,
  not a string.

Several conditions are written as a list or in one string separated by ``,``, ``;`` or
``and``. Parsing errors are :class:`~runbridge.core.errors.ConfigError` naming the text and
where it went wrong. Evaluation never raises: a missing key, or a value that cannot be
compared, fails the condition and says so, with the actual value.

>>> results = evaluate(parse_conditions("val_loss < 0.2, eval.acc >= 0.9"),
...                    {"val_loss": 0.35, "eval": {"acc": 0.95}})
>>> [r.passed for r in results]
[False, True]
>>> results[0].explain()
'val_loss < 0.2 failed: val_loss is 0.35'
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .errors import ConfigError

__all__ = [
    "Condition",
    "ConditionResult",
    "evaluate",
    "failures",
    "lookup",
    "parse_condition",
    "parse_conditions",
]

Scalar = float | int | str | bool | None

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_ORDERING = frozenset({"<", "<=", ">", ">="})

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|==|!=|<|>)
    | (?P<bad_op>=>|=<|=|!)
    | (?P<sep>[,;])
    | (?P<word>[^\s<>=!,;"']+)
    """,
    re.VERBOSE,
)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL = {
    "true": True,
    "false": False,
    "null": None,
    "none": None,
    "inf": math.inf,
    "+inf": math.inf,
    "-inf": -math.inf,
    "infinity": math.inf,
    "+infinity": math.inf,
    "-infinity": -math.inf,
    "nan": math.nan,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as a user would write it in a condition."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if _is_number(value):
        return repr(value) if isinstance(value, float) else str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass(frozen=True)
class Condition:
    """One parsed condition: ``key op value``. Build it with :func:`parse_condition`."""

    key: str
    op: str
    value: Scalar
    text: str
    """The condition as written, normalized (``val_loss < 0.2``)."""

    def __post_init__(self) -> None:
        if self.op not in _OPERATORS:
            raise ConfigError(f"unknown comparison operator {self.op!r}")
        if not self.key:
            raise ConfigError("a condition needs a key")
        if self.op in _ORDERING and not _is_number(self.value):
            raise ConfigError(
                f"condition {self.text!r}: {self.op} needs a number on the right, "
                f"got {_show(self.value)}"
            )

    def __str__(self) -> str:
        return self.text

    def check(self, data: Mapping[str, Any]) -> ConditionResult:
        """Evaluate against ``data``; never raises."""
        found, actual = lookup(data, self.key)
        if not found:
            return ConditionResult(self, False, None, False, "missing")
        if self.op in _ORDERING:
            if not _is_number(actual):
                return ConditionResult(self, False, actual, True, "not a number")
            passed = _OPERATORS[self.op](actual, self.value)
            return ConditionResult(self, bool(passed), actual, True, None)
        equal = _equal(actual, self.value)
        return ConditionResult(self, equal if self.op == "==" else not equal, actual, True, None)


def _equal(actual: Any, expected: Scalar) -> bool:
    if _is_number(expected):
        if not _is_number(actual):
            return False
        if isinstance(expected, float) and math.isnan(expected):
            return isinstance(actual, float) and math.isnan(actual)
        return bool(actual == expected)
    if isinstance(expected, bool):
        return isinstance(actual, bool) and actual is expected
    if expected is None:
        return actual is None
    return isinstance(actual, str) and actual == expected


@dataclasses.dataclass(frozen=True)
class ConditionResult:
    """The outcome of one condition against one mapping."""

    condition: Condition
    passed: bool
    actual: Any
    """The value found under the key (None when missing)."""
    found: bool
    reason: str | None = None
    """Why a failed check could not compare: ``"missing"`` or ``"not a number"``."""

    def explain(self, where: str | None = None) -> str:
        """``'val_loss < 0.2 failed: val_loss is 0.35'``; ``where`` names the mapping
        (e.g. ``"the run summary"``) in the message about a missing key."""
        cond, key = self.condition.text, self.condition.key
        if self.passed:
            return f"{cond} holds: {key} is {_show(self.actual)}"
        if not self.found:
            return f"{cond} failed: {key} not found" + (f" in {where}" if where else "")
        if self.reason == "not a number":
            return (
                f"{cond} failed: {key} is {_show(self.actual)} "
                f"({type(self.actual).__name__}), not a number"
            )
        return f"{cond} failed: {key} is {_show(self.actual)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for a run's outputs)."""
        actual = self.actual
        if isinstance(actual, float) and not math.isfinite(actual):
            actual = str(actual)  # keep the outputs valid JSON
        elif not (actual is None or isinstance(actual, (str, int, float, bool))):
            actual = _show(actual)
        return {
            "condition": self.condition.text,
            "passed": self.passed,
            "found": self.found,
            "actual": actual,
        }


_MISSING = object()


def lookup(data: Any, key: str) -> tuple[bool, Any]:
    """``(found, value)`` for a dotted ``key`` in nested mappings and lists.

    At each level the longest literal key wins, so ``{"a.b": 1}`` and ``{"a": {"b": 1}}``
    both answer ``a.b``; a list is indexed by an integer part (``items.0``).
    """
    value = _dig(data, key.split("."))
    return (False, None) if value is _MISSING else (True, value)


def _dig(data: Any, parts: list[str]) -> Any:
    if not parts:
        return data
    if isinstance(data, Mapping):
        for cut in range(len(parts), 0, -1):
            candidate = ".".join(parts[:cut])
            if candidate in data:
                value = _dig(data[candidate], parts[cut:])
                if value is not _MISSING:
                    return value
        return _MISSING
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        head = parts[0]
        if re.fullmatch(r"-?\d+", head):
            index = int(head)
            if -len(data) <= index < len(data):
                return _dig(data[index], parts[1:])
    return _MISSING


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _literal(token: str, kind: str, text: str) -> Scalar:
    if kind == "string":
        return _unquote(token)
    lowered = token.lower()
    if lowered in _SPECIAL:
        return _SPECIAL[lowered]
    if _NUMBER.fullmatch(token):
        number = float(token)
        if re.fullmatch(r"[+-]?\d+", token):
            return int(token)
        return number
    raise ConfigError(
        f"cannot read condition {text!r}: {token!r} is not a value; write a number "
        "(0.2, 1e-3, inf), true/false, null, or a quoted string ('done')"
    )


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, token, position) of every non-space token."""
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # an unterminated quote
            raise ConfigError(f"cannot read condition {text!r}: unterminated quote at {pos + 1}")
        kind = match.lastgroup or ""
        token = match.group()
        if kind == "bad_op":
            hint = {"=": "==", "!": "!=", "=>": ">=", "=<": "<="}[token]
            raise ConfigError(
                f"cannot read condition {text!r}: {token!r} at {pos + 1} is not an operator; "
                f"did you mean {hint!r}? (use one of < <= > >= == !=)"
            )
        if kind == "word" and token.lower() == "and":
            kind = "sep"
        if kind != "space":
            out.append((kind, token, pos))
        pos = match.end()
    return out


def parse_condition(text: str) -> Condition:
    """Parse exactly one condition; raises ConfigError for anything else."""
    conditions = parse_conditions(text)
    if len(conditions) != 1:
        raise ConfigError(f"expected one condition, got {len(conditions)} in {text!r}")
    return conditions[0]


def parse_conditions(spec: str | Iterable[str] | None) -> tuple[Condition, ...]:
    """Parse ``"a < 1, b >= 2"``, ``["a < 1", "b >= 2"]`` or None (no conditions)."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        return _parse_text(spec)
    if isinstance(spec, Mapping) or not isinstance(spec, Iterable):
        raise ConfigError(
            f"conditions must be a string or a list of strings, got {type(spec).__name__}"
        )
    out: list[Condition] = []
    for item in spec:
        if not isinstance(item, str):
            raise ConfigError(f"a condition must be a string, got {item!r}")
        parsed = _parse_text(item)
        if not parsed:
            raise ConfigError("a condition must not be empty")
        out.extend(parsed)
    return tuple(out)


def _parse_text(text: str) -> tuple[Condition, ...]:
    tokens = _tokens(text)
    groups: list[list[tuple[str, str, int]]] = [[]]
    for token in tokens:
        if token[0] == "sep":
            groups.append([])
        else:
            groups[-1].append(token)
    if all(not group for group in groups):
        return ()
    conditions = []
    for group in groups:
        if not group:
            raise ConfigError(f"cannot read conditions {text!r}: an empty condition")
        conditions.append(_parse_group(group, text))
    return tuple(conditions)


def _parse_group(group: list[tuple[str, str, int]], text: str) -> Condition:
    ops = [i for i, (kind, _, _) in enumerate(group) if kind == "op"]
    if len(ops) != 1:
        what = "no comparison operator" if not ops else "more than one operator"
        raise ConfigError(
            f"cannot read condition {text!r}: {what}; write KEY OP VALUE with OP one of "
            "< <= > >= == != (e.g. 'val_loss < 0.2')"
        )
    at = ops[0]
    left, right = group[:at], group[at + 1 :]
    op = group[at][1]
    if len(left) != 1:
        raise ConfigError(
            f"cannot read condition {text!r}: "
            + (
                f"nothing before {op!r}"
                if not left
                else 'the key has spaces in it; quote it ("val loss" < 0.2)'
            )
        )
    if len(right) != 1:
        raise ConfigError(
            f"cannot read condition {text!r}: "
            + (f"expected a value after {op!r}" if not right else "more than one value")
        )
    key_kind, key_token, _ = left[0]
    key = _unquote(key_token) if key_kind == "string" else key_token
    if not key.strip():
        raise ConfigError(f"cannot read condition {text!r}: empty key")
    value = _literal(right[0][1], right[0][0], text)
    shown_key = key_token if key_kind == "string" else key
    normalized = f"{shown_key} {op} {_show(value) if right[0][0] != 'word' else right[0][1]}"
    return Condition(key, op, value, normalized)


def evaluate(conditions: Iterable[Condition], data: Mapping[str, Any]) -> list[ConditionResult]:
    """Check every condition against ``data``, in order."""
    return [condition.check(data) for condition in conditions]


def failures(conditions: Iterable[Condition], data: Mapping[str, Any]) -> list[ConditionResult]:
    """Only the conditions that do not hold."""
    return [result for result in evaluate(conditions, data) if not result.passed]
