"""Hostile HTTP servers on loopback, written with plain sockets (not the project's emulators).

A :class:`HostileServer` accepts connections in a thread and hands each request it reads to a
*behaviour*: a function ``(conn, request) -> bool`` that writes whatever it likes to the socket
(a well-formed answer, half of one, one byte every 0.2 s, nothing at all) and returns whether
the connection may carry another request. Every request is recorded (``server.requests``).
Closing the server ends every behaviour at once (they pause on the server's stop event), so a
test never waits for a hanging connection to end::

    with HostileServer(hang) as server:
        client = RunClient("rest", server.url, **REST_CONFIG)
        ...

The behaviours below are the attacks: :func:`trickle_headers`, :func:`trickle_body`,
:func:`hang`, :func:`close`, :func:`reply` (a 429 with a long Retry-After, a 503 storm...),
:func:`stream` (an endless 2xx body), :func:`declare` (a Content-Length over any cap),
:func:`gzip_bomb`, and :func:`route` to give each endpoint its own.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "Behaviour",
    "Conn",
    "HostileServer",
    "Received",
    "close",
    "compress",
    "declare",
    "echo",
    "gzip_bomb",
    "hang",
    "json_reply",
    "reply",
    "route",
    "stream",
    "trickle_body",
    "trickle_headers",
]

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclasses.dataclass(frozen=True)
class Received:
    """One request as the server read it."""

    method: str
    target: str
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes
    at: float
    """``time.monotonic()`` when it was read."""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


Behaviour = Callable[["Conn", Received], bool]


class Conn:
    """One accepted connection, as a behaviour sees it."""

    def __init__(self, sock: socket.socket, server: HostileServer) -> None:
        self.sock = sock
        self.server = server
        self._buffer = b""

    @property
    def stopped(self) -> bool:
        return self.server.stopping.is_set()

    def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` (less when the server closes); whether it is still running."""
        return not self.server.stopping.wait(seconds)

    def send(self, data: bytes) -> bool:
        """Write ``data``; False when the peer has gone (or the server is closing)."""
        if self.stopped:
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def trickle(self, data: bytes, interval: float) -> bool:
        """Write ``data`` one byte every ``interval`` seconds."""
        return all(self.send(data[i : i + 1]) and self.pause(interval) for i in range(len(data)))

    def head(self, status: int, headers: Mapping[str, str] | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def answer(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> bool:
        """A complete, well-formed answer (the connection stays open)."""
        head = {"Content-Length": str(len(body)), **(headers or {})}
        return self.send(self.head(status, head) + body)

    def read_request(self) -> Received | None:
        """The next request on the connection; None when the peer closed it or the server stops."""
        while b"\r\n\r\n" not in self._buffer:
            data = self._recv()
            if not data:
                return None
            self._buffer += data
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(self._buffer) < length:
            data = self._recv()
            if not data:
                return None
            self._buffer += data
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Received(method, target, headers, body, time.monotonic())

    def _recv(self) -> bytes:
        while not self.stopped:
            try:
                if _QUICKACK is not None:  # no delayed ACK: a client's body write is not held
                    self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                return self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return b""


class HostileServer:
    """A loopback HTTP/1.1 server that does whatever ``behaviour`` says (see the module)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[Received] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            )

    def close(self) -> None:
        self.stopping.set()
        self._accepting.join(2.0)
        self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in threads:
            thread.join(2.0)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:  # a timeout too
                continue
            sock.settimeout(0.05)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            with self._lock:
                self._socks.append(sock)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        conn = Conn(sock, self)
        try:
            while not self.stopping.is_set():
                request = conn.read_request()
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                if not self.behaviour(conn, request):
                    return
        except OSError:
            return
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


# -- behaviours ----------------------------------------------------------------------------------
def reply(
    status: int, body: bytes | str = b"", headers: Mapping[str, str] | None = None
) -> Behaviour:
    """Answer every request with this (a well-formed answer; the connection stays open)."""
    data = body.encode() if isinstance(body, str) else body

    def behave(conn: Conn, request: Received) -> bool:
        return conn.answer(status, data, headers)

    return behave


def json_reply(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Behaviour:
    return reply(status, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})


def hang(conn: Conn, request: Received) -> bool:
    """Read the request, never answer, never close (until the server stops)."""
    while conn.pause(0.5):
        pass
    return False


def close(conn: Conn, request: Received) -> bool:
    """Read the request, then close the connection without a word."""
    return False


def trickle_headers(interval: float = 0.2) -> Behaviour:
    """Send the status line and an endless header, one byte every ``interval`` seconds: each
    byte arrives long before any read timeout, so only a total deadline ends the request."""

    def behave(conn: Conn, request: Received) -> bool:
        data = b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"a" * 100_000
        conn.trickle(data, interval)
        return False

    return behave


def trickle_body(interval: float = 0.2) -> Behaviour:
    """A 2xx answer whose (chunked) JSON body never ends: one byte every ``interval`` seconds."""

    def behave(conn: Conn, request: Received) -> bool:
        head = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        if not conn.send(conn.head(200, head) + b"1\r\n{\r\n"):
            return False
        while conn.send(b"1\r\n \r\n") and conn.pause(interval):
            pass
        return False

    return behave


def stream(total: int, chunk: int = 256 * 1024, status: int = 200) -> Behaviour:
    """A ``status`` answer of ``total`` bytes, chunked (no Content-Length), sent as fast as the
    client reads; the server holds one chunk in memory, never the whole."""
    piece = b"x" * chunk
    frame = f"{chunk:x}\r\n".encode() + piece + b"\r\n"

    def behave(conn: Conn, request: Received) -> bool:
        head = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        if not conn.send(conn.head(status, head)):
            return False
        sent = 0
        while sent < total:
            if not conn.send(frame):
                return False
            sent += chunk
        conn.send(b"0\r\n\r\n")
        return False

    return behave


def declare(length: int) -> Behaviour:
    """Headers declaring a ``length``-byte body, then no body at all: a client that starts
    reading it hangs; one that checks the declared size first fails at once."""

    def behave(conn: Conn, request: Received) -> bool:
        head = {"Content-Type": "application/json", "Content-Length": str(length)}
        if conn.send(conn.head(200, head)):
            hang(conn, request)
        return False

    return behave


_BOMBS: dict[tuple[int, str], bytes] = {}
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "raw deflate": -zlib.MAX_WBITS}


def compress(data: bytes, coding: str) -> bytes:
    """``data`` as a ``gzip``, ``deflate`` (zlib-wrapped) or ``raw deflate`` body."""
    packer = zlib.compressobj(9, zlib.DEFLATED, _WBITS[coding])
    return packer.compress(data) + packer.flush()


def gzip_bomb(inflated: int, coding: str = "gzip") -> Behaviour:
    """A small compressed body (``Content-Encoding: gzip`` or ``deflate``) that inflates to
    ``inflated`` bytes of zeros (made a megabyte at a time: the test never holds it whole)."""
    if (inflated, coding) not in _BOMBS:
        packer = zlib.compressobj(9, zlib.DEFLATED, _WBITS[coding])
        block = b"\0" * (1 << 20)
        parts = [packer.compress(block) for _ in range(inflated >> 20)]
        parts += [packer.compress(b"\0" * (inflated & ((1 << 20) - 1))), packer.flush()]
        _BOMBS[inflated, coding] = b"".join(parts)
    body = _BOMBS[inflated, coding]
    encoding = "deflate" if coding.endswith("deflate") else coding
    return reply(200, body, {"Content-Type": "application/json", "Content-Encoding": encoding})


def echo(
    status: int, render: Callable[[str], tuple[bytes, Mapping[str, str]]], header: str
) -> Behaviour:
    """Answer ``status`` with what ``render`` makes of the request's ``header`` value (its
    ``Authorization``, say): ``(body, headers)``. A platform, or a proxy in front of it, that
    echoes credentials back."""

    def behave(conn: Conn, request: Received) -> bool:
        body, headers = render(request.headers.get(header.lower(), ""))
        return conn.answer(status, body, headers)

    return behave


def route(default: Behaviour, routes: Mapping[tuple[str, str], Behaviour]) -> Behaviour:
    """``routes[(method, path)]`` for a request to that endpoint, else ``default``."""

    def behave(conn: Conn, request: Received) -> bool:
        return routes.get((request.method, request.path), default)(conn, request)

    return behave
