"""Conditions on results (``"val_loss < 0.2"``): parsing without eval, evaluation, messages."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runbridge.core.conditions import (
    Condition,
    evaluate,
    failures,
    lookup,
    parse_condition,
    parse_conditions,
)
from runbridge.core.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "key", "op", "value"),
    [
        ("val_loss < 0.2", "val_loss", "<", 0.2),
        ("accuracy>=0.9", "accuracy", ">=", 0.9),
        ("epoch == 10", "epoch", "==", 10),
        ("eval.f1 > .8", "eval.f1", ">", 0.8),
        ("loss <= 1e-3", "loss", "<=", 0.001),
        ("delta > -2", "delta", ">", -2),
        ("train/loss != 0", "train/loss", "!=", 0),
        ('"val loss" < 1', "val loss", "<", 1),
        ("'a<b' == 'x, y'", "a<b", "==", "x, y"),
        ('status == "it\\"s done"', "status", "==", 'it"s done'),
        ("done == TRUE", "done", "==", True),
        ("best == null", "best", "==", None),
        ("loss > -inf", "loss", ">", -math.inf),
    ],
)
def test_parse(text: str, key: str, op: str, value: Any) -> None:
    condition = parse_condition(text)
    assert (condition.key, condition.op, condition.value) == (key, op, value)
    assert type(condition.value) is type(value)


def test_several_conditions_in_a_string_or_a_list() -> None:
    expected = ["a < 1", "b >= 2", "c == 3", "d != 4"]
    parsed = parse_conditions("a < 1, b >= 2 and c == 3; d != 4")
    assert [c.text for c in parsed] == expected
    assert [c.text for c in parse_conditions(["a < 1", "b >= 2, c == 3", "d != 4"])] == expected
    assert parse_conditions(None) == () and parse_conditions("  ") == ()
    assert str(parsed[0]) == "a < 1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("val_loss = 0.2", r"'=' at 10 is not an operator; did you mean '=='"),
        ("a => 1", r"did you mean '>='"),
        ("a ! 1", r"did you mean '!='"),
        ("val_loss <", r"expected a value after '<'"),
        ("< 0.2", r"nothing before '<'"),
        ("val_loss 0.2", r"no comparison operator"),
        ("0.1 < loss < 0.2", r"more than one operator"),
        ("val loss < 1", r"quote it"),
        ("a < 1 2", r"more than one value"),
        ("a < O.2", r"'O.2' is not a value"),
        ("a < 'x", r"unterminated quote"),
        ("a < 'x'", r"< needs a number on the right, got 'x'"),
        ("a < 1,, b > 2", r"an empty condition"),
        ("'' < 1", r"empty key"),
    ],
)
def test_bad_expressions_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_conditions(text)


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="string or a list"):
        parse_conditions({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a string"):
        parse_conditions([1])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="must not be empty"):
        parse_conditions([""])
    with pytest.raises(ConfigError, match="expected one condition, got 2"):
        parse_condition("a < 1, b < 2")
    with pytest.raises(ConfigError, match="unknown comparison operator"):
        Condition("a", "=~", 1, "a =~ 1")


def test_no_eval_is_involved() -> None:
    with pytest.raises(ConfigError):
        parse_conditions("__import__('os').system('true') == 0")


SUMMARY = {
    "val_loss": 0.35,
    "accuracy": 0.93,
    "epoch": 10,
    "eval": {"f1": 0.81, "per_class": [0.5, 0.9]},
    "a.b": 1,
    "a": {"b": 2},
    "name": "resnet",
    "ok": True,
    "nan": math.nan,
    "nothing": None,
}


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        ("val_loss < 0.2", False),
        ("val_loss < 0.4", True),
        ("accuracy >= 0.93", True),
        ("epoch == 10", True),
        ("epoch == 10.0", True),
        ("epoch != 10", False),
        ("eval.f1 > 0.8", True),
        ("eval.per_class.1 >= 0.9", True),
        ("eval.per_class.-1 >= 0.9", True),
        ("eval.per_class.5 >= 0.9", False),
        ("a.b == 1", True),  # the literal key wins over nesting
        ("name == 'resnet'", True),
        ("name != 'vgg'", True),
        ("ok == true", True),
        ("ok == 1", False),  # a boolean is not a number
        ("nan < 1", False),
        ("nan == nan", True),
        ("nothing == null", True),
        ("missing != 1", False),  # missing never passes, whatever the operator
    ],
)
def test_evaluate(text: str, passed: bool) -> None:
    (result,) = evaluate(parse_conditions(text), SUMMARY)
    assert result.passed is passed


def test_explanations_name_the_condition_and_the_actual_value() -> None:
    results = evaluate(
        parse_conditions("val_loss < 0.2, accuracy >= 0.9, f2 > 1, name < 3, eval > 1"), SUMMARY
    )
    assert [r.explain("the run summary") for r in results] == [
        "val_loss < 0.2 failed: val_loss is 0.35",
        "accuracy >= 0.9 holds: accuracy is 0.93",
        "f2 > 1 failed: f2 not found in the run summary",
        "name < 3 failed: name is 'resnet' (str), not a number",
        "eval > 1 failed: eval is {'f1': 0.81, 'per_class': [0.5, 0.9]} (dict), not a number",
    ]
    assert results[2].explain() == "f2 > 1 failed: f2 not found"
    assert [
        r.condition.text for r in failures(parse_conditions("epoch == 10, f2 > 1"), SUMMARY)
    ] == ["f2 > 1"]


def test_results_as_plain_json() -> None:
    results = evaluate(parse_conditions("nan < 1, eval > 1, f2 > 1, ok == true"), SUMMARY)
    assert [r.to_dict() for r in results] == [
        {"condition": "nan < 1", "passed": False, "found": True, "actual": "nan"},
        {
            "condition": "eval > 1",
            "passed": False,
            "found": True,
            "actual": "{'f1': 0.81, 'per_class': [0.5, 0.9]}",
        },
        {"condition": "f2 > 1", "passed": False, "found": False, "actual": None},
        {"condition": "ok == true", "passed": True, "found": True, "actual": True},
    ]


def test_lookup() -> None:
    assert lookup({"x": {"y": {"z": 3}}}, "x.y.z") == (True, 3)
    assert lookup({"x.y": {"z": 3}}, "x.y.z") == (True, 3)
    assert lookup({"x": {"y.z": 4}}, "x.y.z") == (True, 4)
    assert lookup({"x": [1, {"k": 2}]}, "x.1.k") == (True, 2)
    assert lookup({"x": "str"}, "x.0") == (False, None)
    assert lookup({"x": None}, "x") == (True, None)
    assert lookup({"x": None}, "x.y") == (False, None)
    # a literal key that leads nowhere falls back to nesting
    assert lookup({"a.b": 1, "a": {"b": {"c": 5}}}, "a.b.c") == (True, 5)
