"""The hub's settings are connection settings: ``max_rps``, ``coalesce`` and ``max_long_polls``
live in ``ClientConfig`` (the one configuration every wrapper builds), reach every async client
made from it, and have one default, core's."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from runbridge.core import AsyncRunClient, ClientConfig, ConfigError
from runbridge.core.config import DEFAULT_COALESCE, DEFAULT_MAX_LONG_POLLS
from runbridge.core.hub import HubOptions
from runbridge.testing.rest import REST_BATCH, REST_CONFIG

BASE = {"platform": "rest", "base_url": "https://x.example", "options": REST_CONFIG}


def test_a_value_set_in_the_configuration_reaches_the_async_client_and_its_hub() -> None:
    config = ClientConfig.from_mapping(
        {
            **BASE,
            "options": {**REST_CONFIG, "batch": REST_BATCH},
            "max_rps": 4,
            "coalesce": 0.25,
            "max_long_polls": 3,
        }
    )
    assert config.to_mapping()["coalesce"] == 0.25
    assert config.to_mapping()["max_long_polls"] == 3

    async def made() -> tuple[float | None, float, int, float]:
        async with config.async_client() as client:
            hub = client.hub()
            return client.budget.rate, hub.plan.coalesce, client._max_long_polls, hub.hold

    assert asyncio.run(made()) == (4.0, 0.25, 3, 0.25)
    with config.client() as sync:  # the sync client has no hub: the settings are not its own
        assert sync.platform == "rest"


def test_the_settings_shape_the_fingerprint_so_clients_are_not_shared_across_them() -> None:
    config = ClientConfig.from_mapping(BASE)
    assert config.replace(coalesce=0.0).fingerprint() != config.fingerprint()
    assert config.replace(max_long_polls=1).fingerprint() != config.fingerprint()


def test_one_default_for_every_wrapper_and_the_client() -> None:
    config = ClientConfig.from_mapping(BASE)
    assert (config.max_rps, config.coalesce, config.max_long_polls) == (
        None,
        DEFAULT_COALESCE,
        DEFAULT_MAX_LONG_POLLS,
    )
    params = inspect.signature(AsyncRunClient).parameters
    assert params["coalesce"].default == DEFAULT_COALESCE == HubOptions().coalesce
    assert params["max_long_polls"].default == DEFAULT_MAX_LONG_POLLS


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_rps": 0}, "max_rps must be a positive number"),
        ({"max_rps": "fast"}, "max_rps must be a positive number"),
        ({"coalesce": -1}, "coalesce must be a non-negative number"),
        ({"coalesce": True}, "coalesce must be a non-negative number"),
        ({"max_long_polls": -1}, "max_long_polls must be an integer >= 0"),
        ({"max_long_polls": 2.5}, "max_long_polls must be an integer >= 0"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_it(
    setting: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientConfig.from_mapping({**BASE, **setting})
