"""The hub's settings (``max_rps``, ``coalesce``, ``max_long_polls``) on the credentials block:
a value set there reaches the worker's client through ``ClientConfig``; the defaults are core's."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from runbridge.core.config import ClientConfig
from runbridge.prefect_blocks import RunbridgeCredentials
from runbridge.testing.rest import REST_CONFIG


def credentials(**fields: object) -> RunbridgeCredentials:
    return RunbridgeCredentials(
        platform="rest", base_url="https://jobs.example.com", options=REST_CONFIG, **fields
    )


def test_a_value_set_on_the_block_reaches_the_async_client() -> None:
    block = credentials(max_rps=2.5, coalesce=0.5, max_long_polls=4)
    config = block.client_config()
    assert (config.max_rps, config.coalesce, config.max_long_polls) == (2.5, 0.5, 4)

    async def made() -> tuple[float | None, float, int]:
        async with block.get_async_client() as client:
            return client.budget.rate, client.hub().plan.coalesce, client._max_long_polls

    assert asyncio.run(made()) == (2.5, 0.5, 4)
    saved = RunbridgeCredentials.model_validate(block.model_dump())
    assert saved.client_config().to_mapping() == config.to_mapping()


def test_the_defaults_are_cores() -> None:
    config = credentials().client_config()
    core = ClientConfig("rest", "https://jobs.example.com", options=REST_CONFIG)
    assert (config.max_rps, config.coalesce, config.max_long_polls) == (
        core.max_rps,
        core.coalesce,
        core.max_long_polls,
    )


@pytest.mark.parametrize(
    "fields", [{"max_rps": 0}, {"max_rps": -2}, {"coalesce": -1}, {"max_long_polls": -1}]
)
def test_a_bad_value_fails_when_the_block_is_built(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=next(iter(fields))):
        credentials(**fields)
