"""What Airflow's secrets masker makes of a ``runbridge`` connection (issue 14, item 8).

Airflow itself walks every connection's extra through its masker when the connection is read
(``Connection.get`` → ``get_uri()`` → ``extra_dejson`` → ``mask_secret``); it masks the values
of secret-named keys only, but warns "too short" for any value under 5 characters (``rest``,
``POST``) once per process. The hook reads its connection without that warning and checks the
token's length itself. These tests use Airflow's real masker and connection code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from runbridge.airflow_provider.hooks import _MASKER_MODULES, _SHORT_FLAG, RunbridgeHook
from runbridge.testing.rest import REST_CONFIG

from .conftest import TOKEN


def maskers() -> list[type]:
    import importlib

    found = []
    for name in _MASKER_MODULES:
        try:
            found.append(importlib.import_module(name).SecretsMasker)
        except ImportError:
            pass
    return found


@pytest.fixture
def fresh_flag() -> Iterator[None]:
    """Airflow's once-per-process "too short" flag, reset for the test and restored after."""
    saved = [(cls, getattr(cls, _SHORT_FLAG)) for cls in maskers()]
    for cls, _ in saved:
        setattr(cls, _SHORT_FLAG, False)
    yield
    for cls, before in saved:
        setattr(cls, _SHORT_FLAG, before)


def define(monkeypatch: pytest.MonkeyPatch, conn_id: str, token: str) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "runbridge",
                "host": "https://jobs.example.com",
                "password": token,
                "extra": {"platform": "rest", "options": REST_CONFIG, "poll_max_interval": 4},
            }
        ),
    )


def test_the_private_flag_the_hook_relies_on_exists() -> None:
    """Pinned: the hook sets ``SecretsMasker._has_warned_short_secret`` around its read."""
    found = maskers()
    assert found and all(isinstance(getattr(cls, _SHORT_FLAG), bool) for cls in found)


def test_airflow_warns_for_short_extra_values_when_a_hook_reads_them_plainly(
    monkeypatch: pytest.MonkeyPatch, fresh_flag: None
) -> None:
    """The defect, reproduced with Airflow's own read (``BaseHook.get_connection``)."""
    from airflow.sdk import BaseHook

    define(monkeypatch, "rb_plain", TOKEN)
    BaseHook.get_connection("rb_plain")
    assert any(getattr(cls, _SHORT_FLAG) for cls in maskers())  # the warning was logged


def test_the_hook_reads_its_connection_without_the_warning(
    monkeypatch: pytest.MonkeyPatch, fresh_flag: None
) -> None:
    define(monkeypatch, "rb_quiet", TOKEN)
    config = RunbridgeHook("rb_quiet").client_config()
    assert config.poll.cap == 4.0  # the connection's poll_max_interval reached the config
    assert not any(getattr(cls, _SHORT_FLAG) for cls in maskers())  # no warning logged
    # the flag is Airflow's again afterwards: a real short secret elsewhere still warns
    from airflow.sdk import BaseHook

    BaseHook.get_connection("rb_quiet")
    assert any(getattr(cls, _SHORT_FLAG) for cls in maskers())


def test_only_the_token_is_masked_not_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.log import redact

    define(monkeypatch, "rb_masked", TOKEN)
    RunbridgeHook("rb_masked").client_config()
    line = f"POST /api/v1/jobs/etl/runs on rest with Idempotency-Key, run.status; {TOKEN}"
    assert redact(line) == line.replace(TOKEN, "***")


def test_a_short_token_is_said_to_be_unmasked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_flag: None
) -> None:
    define(monkeypatch, "rb_short", "k3y")
    with caplog.at_level(logging.WARNING, logger="runbridge.airflow_provider.hooks"):
        RunbridgeHook("rb_short").client_config()
    (record,) = [r for r in caplog.records if r.name == "runbridge.airflow_provider.hooks"]
    text = record.getMessage()
    assert "'rb_short'" in text and "shorter than 5 characters" in text and "k3y" not in text


def test_overlapping_reads_in_threads_restore_airflows_flag(fresh_flag: None) -> None:
    """Triggers read connections in worker threads: the flag is Airflow's again only after the
    last read ends, and then as it was (so later short secrets still warn)."""
    import threading

    from runbridge.airflow_provider.hooks import _no_short_value_warning

    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))

    def read(entered: threading.Event, leave: threading.Event) -> None:
        with _no_short_value_warning():
            entered.set()
            leave.wait(5)

    first = threading.Thread(target=read, args=(a_in, a_out))
    second = threading.Thread(target=read, args=(b_in, b_out))
    first.start()
    assert a_in.wait(5)
    second.start()
    assert b_in.wait(5)
    a_out.set()
    first.join(5)
    assert all(getattr(cls, _SHORT_FLAG) for cls in maskers())  # the second read still runs
    b_out.set()
    second.join(5)
    assert not any(getattr(cls, _SHORT_FLAG) for cls in maskers())
