"""The hub's settings (``max_rps``, ``coalesce``, ``max_long_polls``) on ExternalRunResource: a
value set there reaches the async client (a sensor's waits) through ``ClientConfig``; the
defaults are core's; a bad value is a ConfigError naming the field."""

from __future__ import annotations

import asyncio

import pytest

from runbridge.core import ClientConfig, ConfigError
from runbridge.dagster_resources import ExternalRunResource
from runbridge.testing.rest import REST_CONFIG


def resource(**fields: object) -> ExternalRunResource:
    return ExternalRunResource(
        platform="rest", base_url="https://jobs.example.com", options=REST_CONFIG, **fields
    )


def test_a_value_set_on_the_resource_reaches_the_async_client() -> None:
    config = resource(max_rps=3, coalesce=0.2, max_long_polls=6).client_config()
    assert (config.max_rps, config.coalesce, config.max_long_polls) == (3.0, 0.2, 6)

    async def made() -> tuple[float | None, float, int]:
        async with config.async_client() as client:
            return client.budget.rate, client.hub().plan.coalesce, client._max_long_polls

    assert asyncio.run(made()) == (3.0, 0.2, 6)


def test_the_defaults_are_cores() -> None:
    config = resource().client_config()
    core = ClientConfig("rest", "https://jobs.example.com", options=REST_CONFIG)
    assert (config.max_rps, config.coalesce, config.max_long_polls) == (
        core.max_rps,
        core.coalesce,
        core.max_long_polls,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_rps": 0}, "max_rps"),
        ({"coalesce": -1}, "coalesce"),
        ({"max_long_polls": -1}, "max_long_polls"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_field(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=f"ExternalRunResource: {message}"):
        resource(**fields).client_config()
