"""``ClientConfig`` (the one configuration every wrapper builds), base URL checks, and the
shared async client per configuration and event loop."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from runbridge.core import shared
from runbridge.core.client import AsyncRunClient, RunClient
from runbridge.core.config import ClientConfig, check_base_url
from runbridge.core.errors import ConfigError
from runbridge.core.schedule import DEFAULT_POLL_CAP, PollSchedule, RetryPolicy
from runbridge.core.shared import shared_async_client
from runbridge.testing.rest import REST_CONFIG

TOKEN = "sk-config-test-0123456789"


def config(**changes: Any) -> ClientConfig:
    values: dict[str, Any] = {
        "platform": "rest",
        "base_url": "https://api.example.com/",
        "token": TOKEN,
        "options": REST_CONFIG,
    }
    values.update(changes)
    return ClientConfig(**values)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://",
        "https://:99999",
        "https://host:99999",
        "https://host:0",
        "https://host:port",
        "ftp://host",
        "host.example.com",
        " https://host",
        "https://ho st",
        "https://host/\x00",
        "https://host/?q=1",
        "",
        None,
        b"https://host",
        8080,
    ],
)
def test_a_base_url_that_can_never_work_is_refused_at_once(url: Any) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        check_base_url(url)
    for cls in (RunClient, AsyncRunClient):  # the clients check it too, not later as a retry
        with pytest.raises(ConfigError, match="base_url"):
            cls("rest", url, **REST_CONFIG)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.com/", "https://api.example.com"),
        ("http://127.0.0.1:2024", "http://127.0.0.1:2024"),
        ("http://[::1]:8080/v1/", "http://[::1]:8080/v1"),
        ("https://user@host/base", "https://user@host/base"),
    ],
)
def test_good_base_urls(url: str, expected: str) -> None:
    assert check_base_url(url) == expected


def test_config_never_shows_its_token() -> None:
    made = config()
    assert TOKEN not in repr(made) and TOKEN not in str(made.to_mapping())
    assert made.to_mapping(token=True)["token"] == TOKEN
    assert TOKEN not in made.fingerprint()


def test_the_fingerprint_tells_configurations_apart() -> None:
    one = config()
    assert one.fingerprint() == config().fingerprint()
    assert one.fingerprint() != config(token="another-token-9876543").fingerprint()
    assert one.fingerprint() != config(error_window=5).fingerprint()
    assert one.fingerprint() != config(base_url="https://other.example.com").fingerprint()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"platform": ""}, "platform"),
        ({"platform": "no-such-platform"}, "no-such-platform"),
        ({"token": 42}, "token"),
        ({"options": {"pollling": 3}}, "pollling"),
        ({"options": {1: 2}}, "options"),
        ({"request_timeout": 0}, "request_timeout must be a positive"),
        ({"request_timeout": "30"}, "request_timeout must be a number"),
        ({"request_timeout": float("nan")}, "request_timeout must be a number"),
        ({"error_window": -1}, "error_window"),
        ({"retry": {"attempts": 0}}, "attempts"),
        ({"retry": {"tries": 3}}, "retry"),
        ({"poll": "fast"}, "poll"),
        ({"max_body": 10}, "max_body"),
        ({"max_body": True}, "max_body"),
        ({"error_window": float("inf")}, "error_window must be a number"),
        ({"request_timeout": float("inf")}, "request_timeout must be a number"),
        ({"poll": {"cap": float("nan")}}, "poll cap"),
        ({"retry": {"total": float("inf")}}, "retry total"),
    ],
)
def test_bad_settings_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**changes)


def test_from_mapping_reads_the_stored_json_form() -> None:
    made = ClientConfig.from_mapping(
        {
            "platform": "rest",
            "base_url": "https://api.example.com",
            "options": REST_CONFIG,
            "request_timeout": 12,
            "retry": {"attempts": 2},
            "poll": 5,
            "error_window": 30,
            "token": None,
        }
    )
    assert made.request_timeout == 12.0 and made.error_window == 30.0
    assert made.retry == RetryPolicy(attempts=2)
    assert made.poll == PollSchedule.fixed(5.0)
    again = ClientConfig.from_mapping({**made.to_mapping(), "token": None})
    assert again == made
    with pytest.raises(ConfigError, match="unknown client setting"):
        ClientConfig.from_mapping({**made.to_mapping(), "timeout": 3})
    with pytest.raises(ConfigError, match="needs base_url"):
        ClientConfig.from_mapping({"platform": "rest"})


def test_poll_max_interval_is_the_poll_schedules_cap() -> None:
    """The flat setting every wrapper shows (the Airflow connection's field, the Prefect block's
    and Dagster resource's) lands in one place: ``ClientConfig.poll.cap``."""
    base = {"platform": "rest", "base_url": "https://api.example.com", "options": REST_CONFIG}
    default = ClientConfig.from_mapping(base)
    assert default.poll == PollSchedule() and default.poll.cap == DEFAULT_POLL_CAP == 10.0
    capped = ClientConfig.from_mapping({**base, "poll_max_interval": 4})
    assert capped.poll == PollSchedule(cap=4.0)
    both = ClientConfig.from_mapping(
        {**base, "poll": {"first": 2, "factor": 2}, "poll_max_interval": 60}
    )
    assert both.poll == PollSchedule(first=2.0, factor=2.0, cap=60.0)
    low = ClientConfig.from_mapping({**base, "poll": {"first": 5}, "poll_max_interval": 2})
    assert (low.poll.first, low.poll.cap) == (2.0, 2.0)  # the first pause is never over the cap
    assert ClientConfig.from_mapping({**base, "poll_max_interval": None}) == default
    # it round-trips through the stored form as poll.cap
    assert ClientConfig.from_mapping({**capped.to_mapping(), "token": None}) == capped
    for bad, message in [
        ("soon", "poll_max_interval must be a number"),
        (float("inf"), "poll_max_interval must be a number"),
        (0, "poll_max_interval must be a positive"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ClientConfig.from_mapping({**base, "poll_max_interval": bad})
    with pytest.raises(ConfigError, match="poll is a fixed interval"):
        ClientConfig.from_mapping({**base, "poll": 5, "poll_max_interval": 30})


def test_config_makes_clients_with_its_settings() -> None:
    made = config(request_timeout=timedelta(seconds=7), error_window=45, max_body=4096)
    with made.client() as client:
        assert (client.request_timeout, client.error_window, client.max_body) == (7.0, 45.0, 4096)
        assert client.base_url == "https://api.example.com"
        assert TOKEN not in repr(client)
    with made.client(request_timeout=3) as client:
        assert client.request_timeout == 3.0


async def _use(cfg: ClientConfig, hold: float = 0.0) -> AsyncRunClient:
    async with shared_async_client(cfg, linger=0.05) as client:
        await asyncio.sleep(hold)
        return client


def test_one_shared_client_per_configuration_and_loop() -> None:
    async def main() -> None:
        before = shared.clients_created()
        cfg = config()
        clients = await asyncio.gather(*(_use(cfg, 0.01) for _ in range(20)))
        assert len({id(c) for c in clients}) == 1
        assert shared.clients_created() - before == 1
        other = await _use(dataclasses.replace(cfg, token="rotated-token-000000"))
        assert other is not clients[0]  # a changed configuration gets its own client
        await asyncio.sleep(0.2)  # past the linger: the idle clients close
        assert clients[0]._http.is_closed and other._http.is_closed
        again = await _use(cfg)
        assert again is not clients[0]

    asyncio.run(main())


def test_a_shared_client_is_never_used_on_another_loop_and_closes_with_its_loop() -> None:
    cfg = config()

    async def grab() -> AsyncRunClient:
        async with shared_async_client(cfg, linger=3600) as client:
            return client

    first = asyncio.run(grab())
    second = asyncio.run(grab())
    assert first is not second
    assert first._http.is_closed  # asyncio.run cancelled the linger: closed at loop shutdown


def test_a_new_user_within_the_linger_keeps_the_client() -> None:
    async def main() -> None:
        cfg = config()
        first = await _use(cfg)
        await asyncio.sleep(0.01)
        second = await _use(cfg)
        assert first is second and not first._http.is_closed

    asyncio.run(main())


def test_a_user_in_and_out_within_one_loop_turn_does_not_cut_the_linger_short() -> None:
    """A closer cancelled by a user who came and went in one loop turn hands over to the newer
    closer: the client stays open for the whole linger (it was closed at once)."""

    async def main() -> None:
        cfg = config()
        async with shared_async_client(cfg, linger=0.5) as first:
            pass
        await asyncio.sleep(0.02)  # the first closer is asleep in its linger
        async with shared_async_client(cfg, linger=0.5) as again:
            pass  # in and out within one turn: the first closer is cancelled, a second starts
        await asyncio.sleep(0.05)  # the first closer has handled its cancellation
        assert again is first and not first._http.is_closed
        await asyncio.sleep(0.6)
        assert first._http.is_closed  # the second closer closed it after its linger

    asyncio.run(main())


def test_max_rps_is_the_async_clients_request_budget() -> None:
    """One request budget per connection: ClientConfig carries the hub's ``max_rps`` to every
    async client made from it (the sync client has no hub), and refuses a nonsense value."""
    config = ClientConfig.from_mapping(
        {"platform": "rest", "base_url": "https://x.example", "options": REST_CONFIG, "max_rps": 5}
    )
    assert config.max_rps == 5.0 and config.to_mapping()["max_rps"] == 5.0
    client = config.async_client()
    assert client.hub_options.max_rps == 5.0
    assert ClientConfig.from_mapping(config.to_mapping()) == config
    for bad in (0, -1, float("nan"), float("inf"), True, "fast"):
        with pytest.raises(ConfigError, match="max_rps"):
            config.replace(max_rps=bad)
    assert config.replace(max_rps=None).fingerprint() != config.fingerprint()
