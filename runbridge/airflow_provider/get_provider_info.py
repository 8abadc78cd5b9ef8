"""What Airflow's providers manager learns about runbridge (entry point
``apache_airflow_provider``). Hand-written; ``tests/airflow`` imports every dotted path in it.

This module imports nothing: the providers manager and the UI's connection form read it
without importing hooks.
"""

from __future__ import annotations

from typing import Any

PACKAGE = "runbridge.airflow_provider"
INTEGRATION = "Runbridge"

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "port", "schema"],
    "relabeling": {"host": "Base URL", "password": "Token"},
    "placeholders": {
        "host": "https://api.example.com",
        "password": "API token (optional)",
        "extra": '{"platform": "langgraph", "options": {"assistant_id": "agent"}}',
    },
}

CONN_FIELDS: dict[str, Any] = {
    "platform": {
        "label": "Platform",
        "description": "The platform's name in runbridge: langgraph, rest, flyte, wandb, vi, "
        "lume, or a third-party one (`runbridge platforms` lists them).",
        "schema": {"type": ["string", "null"]},
    },
    "options": {
        "label": "Platform options",
        "description": "A JSON object of the platform's provider options, e.g. "
        '{"assistant_id": "agent"} for LangGraph or the rest provider\'s endpoints.',
        "schema": {"type": ["object", "null"]},
    },
    "request_timeout": {
        "label": "Request timeout (seconds)",
        "description": "Seconds one HTTP request to the platform may take in all (default 30).",
        "schema": {"type": ["number", "null"]},
    },
    "retry": {
        "label": "Retries of each request",
        "description": 'A JSON object of runbridge RetryPolicy fields, e.g. {"attempts": 5, '
        '"total": 60}: how a request that failed in a retryable way is tried again.',
        "schema": {"type": ["object", "null"]},
    },
    "poll": {
        "label": "Poll interval (seconds)",
        "description": "A fixed number of seconds between status checks while waiting "
        "(default: adaptive, 1 s backing off to the longest poll interval); in the extra JSON "
        "also an object of PollSchedule fields. An operator's poll argument overrides it.",
        "schema": {"type": ["number", "null"]},
    },
    "poll_max_interval": {
        "label": "Longest poll interval (seconds)",
        "description": "The longest pause between two status checks of a wait: the adaptive "
        "schedule starts at 1 s and backs off to it (default 10 s: an ended run is seen about "
        "5 s later on average). Raise it for many long waits on a platform without a batch "
        "status call; a fixed poll interval above replaces the schedule.",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
    "error_window": {
        "label": "Error window (seconds)",
        "description": "Seconds of transient platform errors (5xx, 429, network) a wait "
        "tolerates before it fails (default 600). An operator's error_window overrides it.",
        "schema": {"type": ["number", "null"]},
    },
    "max_body": {
        "label": "Largest response (bytes)",
        "description": "The largest response body read from the platform (default 8 MiB).",
        "schema": {"type": ["integer", "null"]},
    },
}


def get_provider_info() -> dict[str, Any]:
    from .. import __version__

    return {
        "package-name": "runbridge",
        "name": "Runbridge",
        "description": "Launch runs on external platforms (LangGraph Platform, any JSON run "
        "API, ...) and wait for them: a hook, an operator, a sensor, a trigger and an extra "
        "link built on the runbridge core client.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": [f"{PACKAGE}.hooks"]}],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": [f"{PACKAGE}.operators"]}
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": [f"{PACKAGE}.sensors"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": [f"{PACKAGE}.triggers"]}],
        "connection-types": [
            {
                "connection-type": "runbridge",
                "hook-class-name": f"{PACKAGE}.hooks.RunbridgeHook",
                "hook-name": "Runbridge",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
        "extra-links": [f"{PACKAGE}.links.RunPageLink"],
    }
