"""Registration, the connection and its hook, and what a DAG file pays to import the provider."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from urllib.parse import quote

import pytest

from runbridge.airflow_provider.get_provider_info import get_provider_info
from runbridge.core.config import ClientConfig
from runbridge.core.errors import ConfigError
from runbridge.core.schedule import PollSchedule, RetryPolicy
from runbridge.testing import Emulator
from runbridge.testing.rest import REST_CONFIG

from .conftest import TOKEN


def test_every_dotted_path_in_the_provider_info_imports() -> None:
    info = get_provider_info()
    assert info["package-name"] == "runbridge"
    modules = [
        module
        for section in ("hooks", "operators", "sensors", "triggers")
        for entry in info[section]
        for module in entry["python-modules"]
    ]
    classes = [c["hook-class-name"] for c in info["connection-types"]] + info["extra-links"]
    for module in modules:
        importlib.import_module(module)
    for path in classes:
        module, _, name = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type)


def test_the_providers_manager_discovers_runbridge() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert manager.providers["runbridge"].data["name"] == "Runbridge"
    hook = ProvidersManagerTaskRuntime().hooks["runbridge"]
    assert hook is not None
    assert hook.hook_class_name == "runbridge.airflow_provider.hooks.RunbridgeHook"
    assert hook.connection_id_attribute_name == "runbridge_conn_id"
    behaviour = manager.field_behaviours["runbridge"]
    assert set(behaviour["hidden_fields"]) == {"login", "port", "schema"}
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "Token"}
    widgets = manager.connection_form_widgets
    assert widgets["extra__runbridge__platform"].field["schema"]["title"] == "Platform"
    assert "runbridge.airflow_provider.links.RunPageLink" in manager.extra_links_class_names
    assert any(t.package_name == "runbridge" for t in manager.trigger)


def test_the_ui_connection_form_metadata() -> None:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    metas = HookMetaService.hook_meta_data()
    (meta,) = [m for m in metas if m.connection_type == "runbridge"]
    assert meta.hook_name == "Runbridge"
    # Issue 14: hook_meta shows default_conn_name null. Airflow 3.3.2 builds every entry of the
    # declarative (provider-info) path with default_conn_name=None (HookMetaService.hook_meta_data,
    # api_fastapi/core_api/services/ui/connections.py:290), whatever the hook declares, and the
    # provider-info schema has no key for it: nothing a provider can set. This fails, and tells
    # us to look again, once Airflow fills it in.
    from runbridge.airflow_provider.hooks import RunbridgeHook

    assert RunbridgeHook.default_conn_name == "runbridge_default"
    assert all(m.default_conn_name is None for m in metas), [
        (m.connection_type, m.default_conn_name) for m in metas
    ]
    fields = meta.standard_fields
    assert fields is not None
    assert fields.host is not None and fields.host.title == "Base URL"
    assert fields.password is not None and fields.password.title == "Token"
    assert fields.port is not None and fields.port.hidden
    assert fields.login is not None and fields.login.hidden
    assert meta.extra_fields is not None
    assert set(meta.extra_fields) == {
        "platform",
        "options",
        "request_timeout",
        "retry",
        "poll",
        "poll_max_interval",
        "error_window",
        "max_body",
    }
    # issue 14: the poll cap is a visible field of the form, a number (not masked)
    cap = meta.extra_fields["poll_max_interval"]
    assert cap["schema"]["type"] == ["number", "null"] and "format" not in cap["schema"]
    assert "10 s" in cap["description"]


def test_airflow_providers_get_shows_runbridge() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "get", "runbridge", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    data = json.loads(out[out.index("[") :])
    assert data[0]["Provider"] == "runbridge"


def test_importing_the_provider_imports_neither_prefect_nor_dagster() -> None:
    code = (
        "import sys\n"
        "import runbridge.airflow_provider\n"
        "from runbridge.airflow_provider import LaunchRunOperator, RunSensor, RunbridgeHook\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'dagster'))\n"
        "assert not bad, bad\n"
        "assert 'runbridge.airflow_provider.triggers' not in sys.modules\n"
        "assert 'runbridge.testing' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- the connection ------------------------------------------------------------------------------
def settings(conn_id: str) -> ClientConfig:
    from runbridge.airflow_provider import RunbridgeHook

    return RunbridgeHook(conn_id).client_config()


def test_a_connection_from_a_uri_environment_variable(
    rest: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, _, port = rest.base_url.removeprefix("http://").partition(":")
    options = quote(json.dumps(REST_CONFIG))
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_URI",
        f"runbridge://:{TOKEN}@{host}:{port}/?platform=rest&scheme=http&options={options}",
    )
    conf = settings("rb_uri")
    assert (conf.platform, conf.base_url, conf.token) == ("rest", rest.base_url, TOKEN)
    assert TOKEN not in repr(conf)
    with conf.client() as client:
        ref = client.launch({"job": "etl"})
        assert client.get(ref).ref == ref
    assert len(rest.launches) == 1


def test_a_connection_whose_host_is_a_url_with_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_PATH",
        json.dumps(
            {
                "conn_type": "runbridge",
                "host": "https://api.example.com",
                "schema": "v2/api",
                "extra": {"platform": "langgraph"},
            }
        ),
    )
    conf = settings("rb_path")
    assert conf.base_url == "https://api.example.com/v2/api" and conf.token is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "names no platform"),
        ({"platform": "rest", "optoins": {}}, "unknown extra field(s) optoins"),
        ({"platform": "langgraph", "options": "[1"}, "'options' is not valid JSON"),
        ({"platform": "rest", "timeout": 5}, "unknown extra field(s) timeout"),
        ({"platform": "langgraph", "request_timeout": "soon"}, "request_timeout must be a number"),
        ({"platform": "langgraph", "error_window": -1}, "error_window must be a non-negative"),
        ({"platform": "langgraph", "poll": {"every": 2}}, "poll: "),
        ({"platform": "langgraph", "retry": {"tries": 2}}, "retry: "),
        ({"platform": "langgraph", "retry": "{"}, "'retry' is not valid JSON"),
        ({"platform": "langgraph", "max_body": 10}, "max_body must be at least"),
        ({"platform": "rest", "options": {"launch": 1}}, "rest provider: status is required"),
        ({"platform": "nope"}, "nope"),
    ],
)
def test_a_bad_connection_says_what_is_wrong(
    extra: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_BAD",
        json.dumps({"conn_type": "runbridge", "host": "http://x.invalid", "extra": extra}),
    )
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        settings("rb_bad")
    assert "connection 'rb_bad'" in str(info.value)


def test_the_connection_builds_the_client_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client setting of the extra reaches the ClientConfig (and so every client made
    from it); the UI's ``extra__runbridge__`` keys are read too."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_FULL",
        json.dumps(
            {
                "conn_type": "runbridge",
                "host": "https://api.example.com",
                "password": TOKEN,
                "extra": {
                    "platform": "langgraph",
                    "options": {"assistant_id": "agent"},
                    "request_timeout": 12,
                    "retry": {"attempts": 2},
                    "extra__runbridge__poll": {"first": 2, "cap": 8},
                    "error_window": 45,
                    "max_body": 65536,
                },
            }
        ),
    )
    config = settings("rb_full")
    assert config == ClientConfig(
        "langgraph",
        "https://api.example.com",
        TOKEN,
        options={"assistant_id": "agent"},
        request_timeout=12,
        retry=RetryPolicy(attempts=2),
        poll=PollSchedule(first=2, cap=8),
        error_window=45,
        max_body=65536,
    )
    assert TOKEN not in repr(config)
    with config.client() as client:
        assert (client.request_timeout, client.error_window) == (12, 45)
        assert client.retry.attempts == 2 and client.poll.cap == 8


def test_a_connection_uri_gives_settings_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_TEXT",
        "runbridge://:tok@api.example.com/?platform=rest&request_timeout=7&poll=3"
        "&error_window=90&retry="
        + quote('{"attempts": 4}')
        + "&options="
        + quote(json.dumps(REST_CONFIG)),
    )
    config = settings("rb_text")
    assert config.request_timeout == 7 and config.error_window == 90
    assert config.poll == PollSchedule.fixed(3) and config.retry == RetryPolicy(attempts=4)


def test_the_poll_cap_is_a_connection_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``poll_max_interval`` (a form field, also in a URI as text) is core's ``poll.cap``; the
    default is core's (10 s); with a fixed ``poll`` it is refused as contradictory."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_CAP",
        "runbridge://:tok@api.example.com/?platform=rest&poll_max_interval=45&options="
        + quote(json.dumps(REST_CONFIG)),
    )
    assert settings("rb_cap").poll == PollSchedule(cap=45.0)
    form = {"platform": "rest", "options": REST_CONFIG, "extra__runbridge__poll_max_interval": 3}
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_FORM",
        json.dumps({"conn_type": "runbridge", "host": "https://x.example", "extra": form}),
    )
    assert settings("rb_form").poll == PollSchedule(cap=3.0, first=1.0)
    plain = {"platform": "rest", "options": REST_CONFIG}
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_PLAIN",
        json.dumps({"conn_type": "runbridge", "host": "https://x.example", "extra": plain}),
    )
    assert settings("rb_plain").poll.cap == 10.0
    both = {**plain, "poll": 5, "poll_max_interval": 30}
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_BOTH",
        json.dumps({"conn_type": "runbridge", "host": "https://x.example", "extra": both}),
    )
    with pytest.raises(ConfigError, match="connection 'rb_both': poll is a fixed interval"):
        settings("rb_both")


def test_a_bad_connection_never_shows_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_LEAK",
        json.dumps(
            {
                "conn_type": "runbridge",
                "host": "http://x.invalid",
                "password": TOKEN,
                "extra": {"platform": "langgraph", "request_timeout": TOKEN},
            }
        ),
    )
    with pytest.raises(ConfigError, match="request_timeout") as info:
        settings("rb_leak")
    assert TOKEN not in str(info.value)


def test_test_connection(
    rest: Emulator, langgraph: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbridge.airflow_provider import RunbridgeHook

    ok, message = RunbridgeHook("rb_rest").test_connection()
    # a generic REST API proves nothing more than "not found" for a run that does not exist
    assert ok and message.startswith("Reached rest") and "would answer the same" in message
    ok, message = RunbridgeHook("rb_langgraph").test_connection()
    assert ok and message.startswith("Connected to langgraph") and "/info" in message
    # the right host, a wrong base path: every request 404s (it said "Connected" before)
    lg = json.loads(os.environ["AIRFLOW_CONN_RB_LANGGRAPH"])
    monkeypatch.setenv("AIRFLOW_CONN_RB_PATHLESS", json.dumps(lg | {"host": lg["host"] + "/v2"}))
    ok, message = RunbridgeHook("rb_pathless").test_connection()
    assert not ok and "(wrong base URL?)" in message and TOKEN not in message
    # the LangGraph platform pointed at the REST API: not the platform's API
    wrong_api = lg | {"host": json.loads(os.environ["AIRFLOW_CONN_RB_REST"])["host"]}
    monkeypatch.setenv("AIRFLOW_CONN_RB_WRONG_API", json.dumps(wrong_api))
    ok, message = RunbridgeHook("rb_wrong_api").test_connection()
    assert not ok and "(wrong base URL?)" in message
    wrong = json.loads(os.environ["AIRFLOW_CONN_RB_REST"]) | {"password": "wrong-token"}
    monkeypatch.setenv("AIRFLOW_CONN_RB_WRONG", json.dumps(wrong))
    ok, message = RunbridgeHook("rb_wrong").test_connection()
    assert not ok and "refused the token" in message and "wrong-token" not in message
    down = wrong | {"host": "http://127.0.0.1:9"}
    monkeypatch.setenv("AIRFLOW_CONN_RB_DOWN", json.dumps(down))
    ok, message = RunbridgeHook("rb_down").test_connection()
    assert not ok and "Could not use rest" in message


def test_max_rps_is_a_connection_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's request budget from the connection (as text in a URI too), refused by name."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_RPS",
        "runbridge://:tok@api.example.com/?platform=rest&max_rps=2.5&options="
        + quote(json.dumps(REST_CONFIG)),
    )
    assert settings("rb_rps").max_rps == 2.5
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_RPS_BAD",
        "runbridge://:tok@api.example.com/?platform=rest&max_rps=-1&options="
        + quote(json.dumps(REST_CONFIG)),
    )
    with pytest.raises(ConfigError, match=r"rb_rps_bad.*max_rps"):
        settings("rb_rps_bad")


def test_the_hubs_other_settings_are_connection_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """coalesce and max_long_polls, as text in a URI, reach the client config; bad ones are
    refused by name."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_HUB",
        "runbridge://:tok@api.example.com/?platform=rest&coalesce=0.25&max_long_polls=7&options="
        + quote(json.dumps(REST_CONFIG)),
    )
    config = settings("rb_hub")
    assert (config.coalesce, config.max_long_polls) == (0.25, 7)
    monkeypatch.setenv(
        "AIRFLOW_CONN_RB_HUB_BAD",
        "runbridge://:tok@api.example.com/?platform=rest&max_long_polls=-3&options="
        + quote(json.dumps(REST_CONFIG)),
    )
    with pytest.raises(ConfigError, match=r"rb_hub_bad.*max_long_polls"):
        settings("rb_hub_bad")
