"""``ClientConfig.check_connection``: "Connected" only when the platform's own API answered.

Every case is a real client against a real server on loopback: the platform's emulator (right
URL and token; a wrong token; a wrong base path), another platform's emulator (a wrong API), a
server that answers 400 to everything, and a port nobody listens on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runbridge.core.config import ClientConfig
from runbridge.testing import serve
from runbridge.testing.rest import REST_CONFIG

TOKEN = "rb-probe-s3cret-token-0123456789"
ORG = "org-probe"
OPTIONS: dict[str, dict[str, Any]] = {
    "langgraph": {},
    "wandb": {},
    "flyte": {},
    "vi": {"organization_id": ORG},
    "lume": {},
    "rest": REST_CONFIG,
}
EMULATOR_ARGS: dict[str, dict[str, Any]] = {"vi": {"organization_id": ORG}}
PROVEN = ["langgraph", "wandb", "flyte", "vi"]
"""Platforms with a probe: an answer only their API gives."""


def check(platform: str, base_url: str, token: str | None = TOKEN) -> tuple[bool, str]:
    config = ClientConfig(platform, base_url, token, options=OPTIONS[platform])
    ok, message = config.check_connection(timeout=5)
    assert TOKEN not in message and "\n" not in message
    return ok, message


@pytest.mark.parametrize("platform", PROVEN)
def test_the_right_url_and_token_connect(platform: str) -> None:
    with serve(platform, token=TOKEN, **EMULATOR_ARGS.get(platform, {})) as emu:
        ok, message = check(platform, emu.base_url)
    assert ok, message
    assert message.startswith(f"Connected to {platform} at {emu.base_url}: ")


@pytest.mark.parametrize("platform", [*PROVEN, "lume", "rest"])
def test_a_wrong_token_is_refused(platform: str) -> None:
    with serve(platform, token=TOKEN, **EMULATOR_ARGS.get(platform, {})) as emu:
        ok, message = check(platform, emu.base_url, token="wrong-token-123456")
    assert not ok, message
    assert "refused the token" in message and "wrong-token-123456" not in message


@pytest.mark.parametrize("platform", PROVEN)
def test_a_wrong_base_path_is_not_connected(platform: str) -> None:
    """The emulator's host, a path under which nothing is served: every request 404s."""
    with serve(platform, token=TOKEN, **EMULATOR_ARGS.get(platform, {})) as emu:
        ok, message = check(platform, emu.base_url + "/v9")
    assert not ok, message
    assert message.startswith(f"Could not use {platform} at {emu.base_url}/v9 (wrong base URL?)")


@pytest.mark.parametrize("platform", PROVEN)
def test_another_platforms_api_is_not_connected(platform: str) -> None:
    other = "rest"
    with serve(other, token=TOKEN) as emu:
        ok, message = check(platform, emu.base_url)
    assert not ok, message
    assert "(wrong base URL?)" in message or "refused" in message


@pytest.fixture
def answers_400() -> Iterator[str]:
    """A server that answers every request with HTTP 400 (a proxy, another service)."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            body = b'{"detail": "bad request"}'
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("platform", [*PROVEN, "lume", "rest"])
def test_http_400_is_never_connected(platform: str, answers_400: str) -> None:
    ok, message = check(platform, answers_400)
    assert not ok, message
    assert "(wrong base URL?)" in message and "bad request" in message


@pytest.mark.parametrize("platform", ["lume", "rest"])
def test_without_a_probe_the_lookup_says_what_it_cannot_prove(platform: str) -> None:
    with serve(platform, token=TOKEN) as emu:
        ok, message = check(platform, emu.base_url)
    assert ok, message
    assert message.startswith(f"Reached {platform} at {emu.base_url}: ")
    assert "a wrong base path would answer the same" in message


def test_nobody_listening_is_not_connected() -> None:
    with serve("rest") as emu:
        url = emu.base_url  # the port is free once the server stopped
    ok, message = check("langgraph", url)
    assert not ok and message.startswith(f"Could not use langgraph at {url}: ")


def test_vi_without_an_organization_falls_back_to_a_lookup() -> None:
    """Listing needs the organization_id option: without it the check can only look a run up,
    and says that this proves less."""
    with serve("vi", token=TOKEN, organization_id=ORG) as emu:
        config = ClientConfig("vi", emu.base_url, TOKEN)
        ok, message = config.check_connection(timeout=5)
    assert TOKEN not in message
    assert ok and message.startswith("Reached vi") and "would answer the same" in message


@pytest.mark.parametrize(
    ("answer", "proves"),
    [
        ({"code": "not_found", "message": "run not found"}, True),
        ({"code": "invalid_argument", "message": "project probe does not exist"}, True),
        ({"detail": "Not Found"}, False),  # a 404 from something that is not Connect
        ({"code": "unimplemented", "message": "no such procedure"}, False),
    ],
)
def test_flyte_probe_reads_connect_errors(answer: dict[str, str], proves: bool) -> None:
    """Connect's error body is the proof, whichever code a lookup of a run that does not exist
    gets on a real deployment (a project that does not exist may be invalid_argument)."""
    from runbridge.core.providers.flyte import CONNECT_CODES, Flyte
    from runbridge.core.providers.probes import WrongAPI, probe

    from .providers.stepper import Canned, step

    status = CONNECT_CODES[answer["code"]][0] if "code" in answer else 404
    exchange = probe(Flyte(project="p", domain="development"))
    assert exchange is not None
    if proves:
        requests, proof = step(exchange, Canned(status, answer))
        assert "RunService" in proof
        assert "runbridge-connection-test" in str(requests[0].json)
        assert "'project': 'p'" in str(requests[0].json)
    else:
        with pytest.raises(WrongAPI):
            step(exchange, Canned(status, answer))
