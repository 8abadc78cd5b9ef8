"""Numeric arguments that arrive as text (a rendered template, an XCom, a mapped argument):
numeric strings are read as numbers; anything else is a clear runbridge error at parse time,
naming the argument (issue 14, item 8)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from runbridge.airflow_provider import LaunchRunOperator
from runbridge.airflow_provider._common import poll_schedule, seconds
from runbridge.core.errors import ConfigError
from runbridge.core.schedule import PollSchedule


def operator(**kwargs: Any) -> LaunchRunOperator:
    return LaunchRunOperator(task_id="t", runbridge_conn_id="rb_rest", run_params={}, **kwargs)


def test_numeric_strings_are_numbers() -> None:
    task = operator(wait_timeout="3600", run_timeout=" 7200.5 ", poll="2", error_window="60")
    assert (task.wait_timeout, task.run_timeout, task.error_window) == (3600.0, 7200.5, 60.0)
    assert task.poll == PollSchedule.fixed(2.0)
    assert poll_schedule({"first": "0.5", "cap": "20", "factor": 2}) == PollSchedule(
        first=0.5, cap=20.0, factor=2.0
    )
    assert seconds(timedelta(minutes=1), "x") == 60.0 and seconds(None, "x") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wait_timeout": "soon"}, "wait_timeout must be a number of seconds, got 'soon'"),
        ({"wait_timeout": "nan"}, "wait_timeout must be a number of seconds, got nan"),
        ({"run_timeout": "inf"}, "run_timeout must be a number of seconds, got inf"),
        ({"error_window": "-5"}, "error_window must be a non-negative number of seconds"),
        ({"poll": "0"}, "poll must be a positive number of seconds"),
        ({"poll": {"factor": "fast"}}, "poll factor must be a number, got 'fast'"),
        (
            {"wait_timeout": "{{ params.timeout }}"},
            "it looks like a template: this argument is not templated",
        ),
    ],
)
def test_other_text_is_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        operator(**kwargs)
