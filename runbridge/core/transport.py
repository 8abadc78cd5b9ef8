"""The async driver's HTTP transport: chosen by measurement (docs/benchmarks.md).

:class:`~runbridge.AsyncRunClient` needs one thing from its HTTP library: "send this request,
hand me the status, the headers and the raw (still encoded) body a piece at a time". With
thousands of waits in one event loop (an Airflow triggerer), what that costs per request is
most of a status check's CPU. Measured on the triggerer workload (N waits, one loop, TLS):
httpx's own transport spends about half of it in httpcore's pool bookkeeping, which grows with
the pool; aiohttp's connector does not. So, when ``aiohttp`` is importable, an
:class:`AsyncRunClient` that makes its own client uses :class:`AiohttpClient`, a small driver
straight over one ``aiohttp.ClientSession`` with the slice of ``httpx.AsyncClient``'s
interface the client uses (``stream()``, ``aclose()``); otherwise, or when told to, httpx's
own ``httpx.AsyncClient`` as before. A user's own ``httpx.AsyncClient`` (``client=``) is
always used as given.

What holds with either transport, and where it is kept:

* the total deadline (connect, headers, every body byte) and the body cap counted while
  inflating: in the client, around the transport (``_time_limit``, ``_Inflater``): this driver
  hands over the body as received (``auto_decompress=False``);
* redaction: in the client (``_response``); this driver's errors carry aiohttp's message only,
  never aiohttp's exception (whose ``request_info`` holds the request headers, the token
  among them);
* errors: aiohttp's are raised as the httpx exceptions the client already classifies, keeping
  "was it sent?" right: only a failure to connect is "not sent" (``ConnectError``,
  ``ConnectTimeout``), anything after that is a read error (``ReadError``, ``ReadTimeout``,
  ``RemoteProtocolError``), so a launch whose connection dropped is looked up, never sent twice
  blindly;
* TLS: verified against the same trust store httpx would use (``httpx.create_ssl_context()``:
  certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``);
* proxies from the environment: when any ``*_proxy`` variable is set, httpx's own transport is
  used (it implements every form of them, ``NO_PROXY`` and SOCKS included, as before).

``RUNBRIDGE_ASYNC_TRANSPORT`` picks one explicitly: ``aiohttp`` (fails at once if it is not
installed), ``httpx``, or ``auto`` (the default, as above).
"""

from __future__ import annotations

import json as _json
import os
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from .errors import ConfigError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ENV_VAR", "AiohttpClient", "AiohttpResponse", "async_http_client", "transport_name"]

ENV_VAR = "RUNBRIDGE_ASYNC_TRANSPORT"
_CHOICES = ("auto", "aiohttp", "httpx")


def _aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def _env_proxies() -> bool:
    """Whether the environment names a proxy (``HTTP_PROXY``, ``https_proxy``, ``ALL_PROXY``...)."""
    return any(key != "no" for key in urllib.request.getproxies_environment())


def transport_name() -> str:
    """The transport a new :class:`~runbridge.AsyncRunClient` without ``client=`` uses now:
    ``"aiohttp"`` or ``"httpx"``."""
    choice = (os.environ.get(ENV_VAR) or "auto").strip().lower()
    if choice not in _CHOICES:
        raise ConfigError(f"{ENV_VAR} must be one of {', '.join(_CHOICES)}, got {choice!r}")
    if choice == "httpx":
        return "httpx"
    if choice == "aiohttp":
        if not _aiohttp_available():
            raise ConfigError(f"{ENV_VAR}=aiohttp, but aiohttp is not installed")
        return "aiohttp"
    return "aiohttp" if _aiohttp_available() and not _env_proxies() else "httpx"


def async_http_client(pool: int, keepalive: float) -> httpx.AsyncClient | AiohttpClient:
    """The HTTP client an :class:`~runbridge.AsyncRunClient` makes for itself: at most ``pool``
    connections, an idle one kept ``keepalive`` seconds."""
    if transport_name() == "aiohttp":
        return AiohttpClient(pool, keepalive)
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=keepalive
        )
    )


class AiohttpResponse:
    """The part of ``httpx.Response`` the client reads: ``status_code``, ``headers`` (case-
    insensitive), ``is_stream_consumed`` and ``aiter_raw()`` (the body as received)."""

    __slots__ = ("_response", "headers", "status_code")

    is_stream_consumed = False

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._response.content.iter_any():
                yield data
        except _client_error() as exc:
            raise _httpx_error(exc) from None


class _Exchange:
    """``async with client.stream(...) as response``: sends on entry; on exit the connection
    goes back to the pool if the answer was read whole, else it is closed."""

    __slots__ = ("_args", "_client", "_response")

    def __init__(self, client: AiohttpClient, args: dict[str, Any]) -> None:
        self._client = client
        self._args = args
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> AiohttpResponse:
        session = self._client._session or self._client._open()
        try:
            self._response = await session.request(**self._args)
        except _client_error() as exc:
            raise _httpx_error(exc) from None
        return AiohttpResponse(self._response)

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        assert self._response is not None
        if exc_type is None:
            self._response.release()
        else:
            self._response.close()  # a half-read answer: its connection is not reused


class AiohttpClient:
    """One ``aiohttp.ClientSession`` (made on first use, in the running event loop) behind the
    slice of ``httpx.AsyncClient`` that :class:`~runbridge.AsyncRunClient` uses."""

    def __init__(self, pool: int, keepalive: float) -> None:
        self._pool = pool
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        # the trust store httpx would use (certifi, or SSL_CERT_FILE / SSL_CERT_DIR)
        self._ssl = httpx.create_ssl_context(trust_env=True)

    def __repr__(self) -> str:
        return f"<AiohttpClient pool={self._pool}>"

    @property
    def is_closed(self) -> bool:
        return self._closed

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._closed:
            raise RuntimeError("the client has been closed")
        connector = aiohttp.TCPConnector(
            limit=self._pool, limit_per_host=0, keepalive_timeout=self._keepalive, ssl=self._ssl
        )
        # trust_env=False: proxies from the environment go to httpx's transport instead (see
        # async_http_client), and no ~/.netrc credentials are added to requests
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
    ) -> _Exchange:
        """One request, sent when the block is entered; its body is read inside the block."""
        import aiohttp
        import yarl

        if params:
            # the same query string httpx would send
            target = yarl.URL(str(httpx.URL(url, params=params)), encoded=True)
        else:
            target = yarl.URL(url)
        data: bytes | None = content
        if json is not None:
            # as httpx encodes it
            data = _json.dumps(
                json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            headers = {**headers, "content-type": "application/json"}
        key = (timeout.connect, timeout.read)
        limits = self._timeouts.get(key)
        if limits is None:
            if len(self._timeouts) > 64:  # deadlines lowered to what is left: seldom the same
                self._timeouts.clear()
            limits = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=timeout.connect, sock_read=timeout.read
            )
        return _Exchange(
            self,
            {
                "method": method,
                "url": target,
                "headers": headers,
                "data": data,
                "allow_redirects": False,
                "timeout": limits,
            },
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()


def _client_error() -> type[Exception]:
    import aiohttp

    return aiohttp.ClientError


def _httpx_error(exc: Exception) -> httpx.HTTPError:
    """aiohttp's error as the httpx error the client classifies, with aiohttp's message and
    nothing else (raised ``from None``: aiohttp's exception holds the request's headers)."""
    import aiohttp

    message = f"{type(exc).__name__}: {exc}"
    # aiohttp >= 3.10 tells a connect timeout apart; before, it is a read timeout (sent or not)
    connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", ())
    if isinstance(exc, aiohttp.ClientConnectorError):  # nothing was sent
        return httpx.ConnectError(message)
    if isinstance(exc, connect_timeout):  # nothing was sent
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return httpx.ReadError(message)  # sent, or perhaps sent: never "not sent"
    return httpx.RemoteProtocolError(message)  # an answer aiohttp could not parse
