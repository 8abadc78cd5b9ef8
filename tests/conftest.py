"""Shared pytest configuration. Fixtures from other modules are imported here, e.g.
``from tests.integration.langgraph_fixture import langgraph_server``."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio: the async client uses asyncio."""
    return "asyncio"
