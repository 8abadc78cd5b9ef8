"""The async driver's transport (core/transport.py): which one a client gets, and that the
promises hold on each (the aiohttp driver and httpx's own), against real servers on loopback.

The hostile-server suites (test_deadlines, test_body_cap, test_secrets, test_client) run on the
default transport, the aiohttp driver where aiohttp is installed; the tests here run the
promises that depend on the transport on *both*, plus what only the driver has to get right:
"was it sent?" after a dropped connection, aiohttp's exceptions never reaching the caller, TLS
verification against httpx's trust store, proxies from the environment, the session made in
the loop that uses it.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
import socket
import ssl
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbridge import AsyncRunClient, LaunchUncertain
from runbridge.core.errors import ConfigError, ProtocolError, TransportError
from runbridge.core.http import Request
from runbridge.core.schedule import RetryPolicy
from runbridge.core.transport import ENV_VAR, AiohttpClient, transport_name
from runbridge.testing import create_emulator
from runbridge.testing.rest import REST_CONFIG

from . import hostile

pytest.importorskip("aiohttp")

TOKEN = "tr-s3cret-token-77"
ONCE = RetryPolicy(attempts=1)
ROOT = Path(__file__).resolve().parents[2]


def run_json(status: str, run_id: str = "r-1") -> dict[str, Any]:
    return {"run": {"id": run_id, "job": "j", "status": status, "created_at": None}}


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs on both transports (chosen the way a deployment would: the env var)."""
    monkeypatch.setenv(ENV_VAR, request.param)
    return str(request.param)


def client_for(url: str, **options: Any) -> AsyncRunClient:
    return AsyncRunClient("rest", url, TOKEN, **{**REST_CONFIG, **options})


def expected_type(transport: str) -> type:
    return AiohttpClient if transport == "aiohttp" else httpx.AsyncClient


# -- which transport -------------------------------------------------------------------------
def test_the_default_is_the_aiohttp_driver_when_aiohttp_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert transport_name() == "aiohttp"
    client = client_for("http://127.0.0.1:9")
    assert isinstance(client._http, AiohttpClient)
    monkeypatch.setenv(ENV_VAR, "httpx")
    assert isinstance(client_for("http://127.0.0.1:9")._http, httpx.AsyncClient)


@pytest.mark.anyio
async def test_a_proxy_in_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a proxy variable set the client gets httpx's transport, which implements every
    form of them (NO_PROXY, SOCKS...) as before; the request really goes through the proxy."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with hostile.HostileServer(hostile.json_reply(200, run_json("running"))) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        assert transport_name() == "httpx"
        async with client_for("http://platform.invalid") as client:
            assert isinstance(client._http, httpx.AsyncClient)
            status = await client.get("rest:r-1")
    assert status.raw_state == "running"
    assert proxy.requests[0].target == "http://platform.invalid/api/v1/runs/r-1"


def test_a_users_own_httpx_client_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "aiohttp")
    mine = httpx.AsyncClient()
    assert client_for("http://127.0.0.1:9", client=mine)._http is mine


def test_a_bad_choice_is_a_clear_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "curl")
    with pytest.raises(ConfigError, match="RUNBRIDGE_ASYNC_TRANSPORT must be one of"):
        client_for("http://127.0.0.1:9")
    monkeypatch.setenv(ENV_VAR, "aiohttp")
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    with pytest.raises(ConfigError, match="aiohttp is not installed"):
        client_for("http://127.0.0.1:9")
    monkeypatch.setenv(ENV_VAR, "auto")
    assert transport_name() == "httpx"  # the fallback when aiohttp is missing


# -- the promises, on both transports --------------------------------------------------------
@pytest.mark.anyio
async def test_requests_are_the_same_on_both(transport: str) -> None:
    """Method, path, query string, JSON body bytes and the token header as httpx sends them."""
    with hostile.HostileServer(hostile.json_reply(201, run_json("queued"))) as server:
        async with client_for(server.url) as client:
            assert isinstance(client._http, expected_type(transport))
            await client.launch({"job": "j", "name": "é ü", "n": 1}, key="k-1")
            query: dict[str, str | int | float | bool] = {
                "q": "running job/é",
                "n": 5,
                "flag": True,
            }
            await client._send(Request("GET", "/api/v1/runs/r%2F1", params=query))
    launch, listing = server.requests[0], server.requests[-1]
    assert launch.method == "POST" and launch.path == "/api/v1/jobs/j/runs"
    assert launch.headers["authorization"] == f"Bearer {TOKEN}"
    assert launch.headers["content-type"] == "application/json"
    assert launch.headers["accept-encoding"] == "gzip, deflate"
    assert launch.headers["idempotency-key"] == "k-1"
    assert "é ü".encode() in launch.body  # UTF-8, not ASCII escapes (as httpx encodes)
    assert listing.method == "GET"
    # httpx's query encoding, the quoted id left as it was
    assert listing.target == "/api/v1/runs/r%2F1?q=running+job%2F%C3%A9&n=5&flag=true"


@pytest.mark.anyio
async def test_a_trickled_body_ends_at_the_total_deadline(transport: str) -> None:
    with hostile.HostileServer(hostile.trickle_body(0.1)) as server:
        async with client_for(server.url, request_timeout=1.0, retry=ONCE) as client:
            start = time.monotonic()
            with pytest.raises(TransportError) as info:
                await client.get("rest:r-1")
    assert time.monotonic() - start < 3.0
    assert info.value.timeout


@pytest.mark.anyio
async def test_trickled_headers_end_at_the_total_deadline(transport: str) -> None:
    with hostile.HostileServer(hostile.trickle_headers(0.1)) as server:
        async with client_for(server.url, request_timeout=1.0, retry=ONCE) as client:
            start = time.monotonic()
            with pytest.raises(TransportError):
                await client.get("rest:r-1")
    assert time.monotonic() - start < 4.0


@pytest.mark.anyio
async def test_the_body_cap_counts_inflated_bytes(transport: str) -> None:
    with hostile.HostileServer(hostile.gzip_bomb(200 * 1024 * 1024)) as server:
        async with client_for(server.url) as client:
            with pytest.raises(ProtocolError, match="over the client's max_body"):
                await client.get("rest:r-1")
        assert server.count() == 1


@pytest.mark.anyio
async def test_a_gzip_answer_is_inflated(transport: str) -> None:
    body = gzip.compress(json.dumps(run_json("running")).encode())
    behaviour = hostile.reply(
        200, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    with hostile.HostileServer(behaviour) as server:
        async with client_for(server.url) as client:
            status = await client.get("rest:r-1")
    assert status.raw_state == "running"


@pytest.mark.anyio
async def test_a_dropped_connection_after_the_request_is_not_called_unsent(
    transport: str,
) -> None:
    """A launch whose connection closed after the request went out may have started a run:
    never "not sent" (which would allow sending it again blindly)."""
    with hostile.HostileServer(hostile.close) as server:
        async with client_for(server.url, retry=ONCE) as client:
            with pytest.raises(LaunchUncertain):  # not TransportError(sent=False)
                await client.launch({"job": "j"})
    assert server.count("POST") == 1  # and never sent again


@pytest.mark.anyio
async def test_a_refused_connection_is_not_sent(transport: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}", retry=ONCE) as client:
        with pytest.raises(TransportError) as info:
            await client.launch({"job": "j"})
    assert info.value.sent is False


@pytest.mark.anyio
async def test_errors_carry_no_token_and_no_aiohttp_exception(transport: str) -> None:
    """An unparseable answer quoting the token: the error is redacted and chains to nothing
    that holds the request (aiohttp's exceptions keep its headers in ``request_info``)."""

    def garbage(conn: hostile.Conn, request: hostile.Received) -> bool:
        conn.send(f"HTTP/1.1 2x0 Bearer {TOKEN}\r\nX: {TOKEN}\r\n\r\n".encode())
        return False

    with hostile.HostileServer(garbage) as server:
        async with client_for(server.url, retry=ONCE, error_window=0) as client:
            with pytest.raises(TransportError) as info:
                await client.get("rest:r-1")
    chain: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for error in chain:
        assert TOKEN not in str(error) and TOKEN not in repr(error)
        assert not type(error).__module__.startswith("aiohttp")


@pytest.mark.anyio
async def test_a_connection_is_reused_across_checks(transport: str) -> None:
    with hostile.HostileServer(hostile.json_reply(200, run_json("running"))) as server:
        async with client_for(server.url) as client:
            for _ in range(5):
                await client.get("rest:r-1")
        connections = len(server._threads)
    assert server.count() == 5
    assert connections == 1


def test_a_client_made_outside_a_loop_works_inside_one(transport: str) -> None:
    """The aiohttp session is made on first use, in the loop that uses it (no warning)."""
    with (
        hostile.HostileServer(hostile.json_reply(200, run_json("succeeded"))) as server,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error")
        client = client_for(server.url)

        async def use() -> str:
            try:
                return (await client.get("rest:r-1")).raw_state
            finally:
                await client.aclose()

        assert asyncio.run(use()) == "succeeded"
    assert client._http.is_closed


# -- TLS ---------------------------------------------------------------------------------------
def _make_certificate(directory: Path) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location("bench_tls", ROOT / "bench" / "tls.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cert, key = module.make_certificate(directory)
    return cert, key


@pytest.fixture
def tls_emulator(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The ``rest`` emulator over HTTPS (uvicorn's TLS, a throwaway certificate)."""
    import uvicorn

    cert, key = _make_certificate(tmp_path)
    emu = create_emulator("rest")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    emu.base_url = f"https://127.0.0.1:{port}"
    emu.add_run(run_id="r-tls")
    config = uvicorn.Config(
        emu.app,
        log_level="warning",
        lifespan="off",
        interface="asgi3",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield emu.base_url, cert
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.anyio
async def test_tls_is_verified_against_httpx_trust_store(
    transport: str, tls_emulator: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = tls_emulator
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # certifi: the certificate is unknown
    async with client_for(url, retry=ONCE) as client:
        with pytest.raises(TransportError) as info:
            await client.get("rest:r-tls")
    assert "certificate" in str(info.value).lower()
    assert info.value.sent is False
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as httpx would trust it
    async with client_for(url) as client:
        status = await client.get("rest:r-tls")
    assert status.ref.id == "r-tls"
    assert ssl.OPENSSL_VERSION  # (TLS really was in use: the URL is https)
