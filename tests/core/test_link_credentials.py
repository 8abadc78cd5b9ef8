"""A base URL's ``user:password@`` never reaches a run page link (XCom, artifacts, metadata)."""

from __future__ import annotations

from typing import Any

import pytest

from runbridge.core import RunClient, RunRef
from runbridge.core.config import without_userinfo
from runbridge.core.http import Response

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.com", "https://api.example.com"),
        (f"https://bob:{SECRET}@api.example.com:8443/v1", "https://api.example.com:8443/v1"),
        (f"https://{SECRET}@api.example.com", "https://api.example.com"),
        ("http://a:b@c@[::1]:8080/x", "http://[::1]:8080/x"),
    ],
)
def test_without_userinfo(url: str, expected: str) -> None:
    assert without_userinfo(url) == expected


@pytest.mark.parametrize(
    ("platform", "options", "base"),
    [
        ("wandb", {}, f"https://bob:{SECRET}@wandb.example.com"),
        ("langgraph", {"assistant_id": "agent"}, f"https://bob:{SECRET}@agents.example.com"),
        (
            "flyte",
            {"project": "p", "domain": "development"},
            f"https://bob:{SECRET}@flyte.example.com",
        ),
    ],
)
def test_derived_run_links_carry_no_credentials(
    platform: str, options: dict[str, Any], base: str
) -> None:
    """The providers derive their run page from the client's base URL (W&B's app, LangGraph's
    Studio link, Flyte's console); the credentials in it are not carried over."""
    client = RunClient(platform, base, "tok", **options)
    try:
        provider = client.provider
        assert provider.base_url is not None and SECRET not in provider.base_url
        assert "example.com" in provider.base_url
    finally:
        client.close()


def test_a_status_url_from_a_credentialed_base_has_no_credentials() -> None:
    """End to end through the LangGraph provider's status parsing: the Studio link it builds."""
    client = RunClient("langgraph", f"https://bob:{SECRET}@agents.example.com", "tok")
    try:
        ref = RunRef("langgraph", "run-1", {"thread_id": "th-1"})
        exchange = client.provider.status(ref)
        run = b'{"run_id": "run-1", "thread_id": "th-1", "status": "success"}'
        thread = b'{"thread_id": "th-1", "status": "idle", "values": {}}'
        request = next(exchange)
        for _ in range(5):
            body = run if "/runs/" in request.path else thread
            try:
                request = exchange.send(Response(200, {}, body, request=request))
            except StopIteration as stop:
                status = stop.value
                break
        else:  # pragma: no cover - the provider never finishes
            pytest.fail("the status exchange did not end")
        assert status.url and SECRET not in status.url and "bob" not in status.url
    finally:
        client.close()
