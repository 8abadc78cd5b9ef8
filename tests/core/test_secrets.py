"""A promise proven at its edge: the token never leaves runbridge, in any form.

A hostile platform (tests/core/hostile.py) echoes the request's ``Authorization`` header back,
raw, base64-encoded (both alphabets, padded or not, at every alignment), escaped inside a JSON
string, URL-encoded, in its error bodies (JSON, plain text, an HTML proxy page), in an
``x-request-id`` header, and in a 200 answer's message, URL and outputs. Everything runbridge
lets out is captured: its log records at DEBUG (message and args), every Event a hook gets, the
exception (``str``, ``repr``, ``args``, every attribute, its cause and context chain, its
traceback), the RunStatus (``repr``, ``to_dict``, ``summary``), the client's repr, and the CLI's
output with ``--debug``. No form of the token may appear in any of it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from click.testing import CliRunner

from runbridge.cli import cli
from runbridge.core import (
    AsyncRunClient,
    PollSchedule,
    RetryPolicy,
    RunbridgeError,
    RunClient,
    RunStatus,
)
from runbridge.core.redact import Redactor
from runbridge.core.transport import transport_name
from runbridge.testing.rest import REST_CONFIG

from . import hostile
from .helpers import ClientUnderTest, make_client

TOKEN = "rb/S3cr3t+T0ken=Zq9x~J7w"
"""A bearer token with '/', '+', '=' and '~': each encoding below writes it differently."""
WANDB_KEY = "5f3c9a0e7b1d2c4f6a8e0b9d7c5a3f1e2d4c6b8a"
FAST: dict[str, Any] = {
    "retry": RetryPolicy(attempts=2, first=0.0, cap=0.0, jitter=0.0),
    "poll": PollSchedule.fixed(0.02),
}


# -- every form of a secret --------------------------------------------------------------------
def base64_shapes(secret: bytes) -> set[str]:
    """What every base64 text (standard or URL-safe alphabet, padded or not) holding ``secret``
    at any byte offset contains: the characters made of the secret's bits alone."""
    shapes = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            text = encode(b"\0" * offset + secret + b"\0\0").decode()
            first = -(-8 * offset // 6)  # the first character wholly inside the secret
            last = (8 * (offset + len(secret)) - 6) // 6  # the last
            shapes.add(text[first : last + 1])
    return shapes


def _lower_hex(text: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def url_forms(secret: str) -> set[str]:
    forms = {quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, "/")}
    forms.add("".join(f"%{b:02X}" for b in secret.encode()))  # every byte escaped
    return forms | {_lower_hex(form) for form in forms}


def json_forms(secret: str) -> set[str]:
    every = "".join(f"\\u{ord(c):04x}" for c in secret)
    return {
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        every,
        every.upper().replace("\\U", "\\u"),
    }


def leak_forms(secret: str) -> set[str]:
    """The forms of ``secret`` that must never appear in anything runbridge lets out."""
    forms = {secret} | url_forms(secret) | json_forms(secret) | base64_shapes(secret.encode())
    assert all(len(form) >= len(secret) for form in forms)
    return forms


def test_the_leak_detector_finds_every_form() -> None:
    """The detector itself: base64 of the secret inside a longer text, at every alignment,
    either alphabet, padded or not, is found."""
    forms = leak_forms(TOKEN)
    for prefix in ("", "x", "xy", "Bearer ", "api:"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode((prefix + TOKEN + "!").encode()).decode()
            for text in (encoded, encoded.rstrip("=")):
                assert any(form in text for form in forms), (prefix, text)


# -- what a hostile platform echoes -------------------------------------------------------------
def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


ECHOES: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "base64": _b64,
    "base64url unpadded": _b64url,
    "json \\u escapes": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    "json escaped solidus": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "url quote": lambda s: quote(s, safe=""),
    "url quote, / safe": quote,
    "url quote_plus": quote_plus,
    "url lower-case hex": lambda s: _lower_hex(quote(s, safe="")),
}
"""How the platform writes what it echoes (each fit to sit inside a JSON string as is)."""


def echoed(value: str, encode: Callable[[str], str]) -> str:
    """The header value and its last word, each encoded, the header value also after one and
    two other bytes (so a base64 form holds the token at each alignment)."""
    token = value.rpartition(" ")[2]
    return " | ".join(encode(s) for s in (value, token, "x" + value, "xy" + value))


def json_error(text: str) -> bytes:
    return (
        f'{{"detail": "denied: {text}", "message": "{text}", '
        f'"debug": {{"authorization": "{text}"}}, "{text}": true}}'
    ).encode()


def run_body(state: str) -> Callable[[str], bytes]:
    def body(text: str) -> bytes:
        return (
            f'{{"run": {{"id": "r-1", "status": "{state}", '
            f'"url": "https://jobs.example.com/r/1?auth={text}", '
            f'"error": {{"message": "{text}"}}, "result": {{"echo": "{text}", "{text}": ["{text}"]}}}}}}'
        ).encode()

    return body


CASES: dict[str, tuple[int, str, Callable[[str], bytes]]] = {
    "s500": (500, "application/json", json_error),
    "s400": (400, "application/json", json_error),
    "s404": (404, "text/plain", lambda text: f"no run here for {text}\n".encode()),
    "s429": (429, "application/json", json_error),
    "s502": (
        502,
        "text/html",
        lambda text: f"<html><h1>Bad Gateway</h1><p>{text}</p></html>".encode(),
    ),
    "done": (200, "application/json", run_body("failed")),
    "busy": (200, "application/json", run_body("running")),
    "garbled": (200, "", lambda text: b""),
}
"""By run id (and launch job): the status, content type and body the platform answers; for
``garbled``, a malformed header line quoting the echo (the HTTP parser's error quotes it)."""


def echo_platform(encode: Callable[[str], str], header: str = "authorization") -> hostile.Behaviour:
    """Answers each request per ``CASES`` (chosen by the run id or job in its path), echoing
    the request's ``header`` in the body and in ``x-request-id``."""

    def behave(conn: hostile.Conn, request: hostile.Received) -> bool:
        case = request.path.split("/")[4]  # /api/v1/runs/{id}[/cancel], /api/v1/jobs/{job}/runs
        status, content_type, body = CASES[case]
        text = echoed(request.headers.get(header, ""), encode)
        if case == "garbled":
            conn.send(f"HTTP/1.1 200 OK\r\nX-Echo {text}\r\nContent-Length: 0\r\n\r\n".encode())
            return False
        headers = {"Content-Type": content_type, "X-Request-Id": text}
        return conn.answer(status, body(text), headers)

    return behave


# -- everything runbridge lets out ---------------------------------------------------------------
@dataclasses.dataclass
class Outflow:
    """Every text runbridge produced, labelled by where it came from."""

    texts: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, where: str, value: Any) -> None:
        self.texts.append((where, value if isinstance(value, str) else repr(value)))

    def status(self, where: str, status: RunStatus) -> None:
        self.add(f"{where} repr", repr(status))
        self.add(f"{where} str", str(status))
        self.add(f"{where} to_dict", json.dumps(status.to_dict()))
        self.add(f"{where} summary", status.summary())

    def exception(self, where: str, exc: BaseException, seen: set[int] | None = None) -> None:
        seen = set() if seen is None else seen
        if id(exc) in seen:
            return
        seen.add(id(exc))
        self.add(f"{where} str", str(exc))
        self.add(f"{where} repr", repr(exc))
        self.add(f"{where} args", repr(exc.args))
        self.add(f"{where} traceback", "".join(traceback.format_exception(exc)))
        if isinstance(exc, RunbridgeError):  # every attribute, followed
            for name, value in vars(exc).items():
                if isinstance(value, BaseException):
                    self.exception(f"{where}.{name}", value, seen)
                elif isinstance(value, RunStatus):
                    self.status(f"{where}.{name}", value)
                else:
                    self.add(f"{where}.{name}", str(value))
                    self.add(f"{where}.{name} repr", repr(value))
        for link in ("__cause__", "__context__"):
            linked = getattr(exc, link)
            if linked is not None:
                self.exception(f"{where}.{link}", linked, seen)

    def records(self, records: Iterable[logging.LogRecord]) -> None:
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        for record in records:
            self.add(f"log {record.name}", formatter.format(record))
            self.add(f"log {record.name} args", repr(record.args))
            self.add(f"log {record.name} msg", str(record.msg))

    def leaks(self, secret: str) -> list[str]:
        forms = leak_forms(secret)
        return [
            f"{where}: {form!r} in {text[:300]!r}"
            for where, text in self.texts
            for form in forms
            if form in text
        ]


async def everything(client: ClientUnderTest, out: Outflow, case: str) -> None:
    """get, wait (with check), launch and cancel of the run (job) ``case``; whatever each
    returns or raises, and every event it emits, into ``out``."""
    ref = client.ref(case)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("get", (ref,), {}),
        ("wait", (ref,), {"wait_timeout": 0.05, "check": True}),
        ("launch", ({"job": case},), {}),
        ("cancel", (ref,), {}),
    ]
    for op, args, kwargs in calls:
        events: list[Any] = []
        where = f"{case} {op}"
        try:
            result = await client._call(op, *args, on_event=events.append, **kwargs)
        except RunbridgeError as exc:
            out.exception(where, exc)
        else:
            if isinstance(result, RunStatus):
                out.status(where, result)
            else:
                out.add(where, result)
        for event in events:
            out.add(f"{where} event {event.kind}", repr(event))
            out.add(f"{where} event {event.kind} str", str(event))


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def clients() -> AsyncIterator[list[ClientUnderTest]]:
    made: list[ClientUnderTest] = []
    yield made
    for client in made:
        await client.close()


# -- the attacks --------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("echo", list(ECHOES), ids=list(ECHOES))
async def test_an_echoed_bearer_token_never_leaves(
    kind: str, echo: str, clients: list[ClientUnderTest], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="runbridge")
    out = Outflow()
    with hostile.HostileServer(echo_platform(ECHOES[echo])) as server:
        hooked: list[Any] = []
        client = make_client(
            kind, "rest", server.url, TOKEN, hooks=[hooked.append], **REST_CONFIG, **FAST
        )
        clients.append(client)
        for case in CASES:
            await everything(client, out, case)
        out.add("client repr", repr(client.client))
        out.add("client str", str(client.client))
        for event in hooked:
            out.add(f"client hook {event.kind}", repr(event))
    assert server.requests and all(
        r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests
    )
    out.records(r for r in caplog.records if r.name.startswith("runbridge"))
    assert len(out.texts) > 100
    assert "***" in " ".join(text for _, text in out.texts)  # the echoes were there, masked
    leaks = out.leaks(TOKEN)
    assert not leaks, f"{len(leaks)} leaks:\n" + "\n".join(leaks[:20])


@pytest.mark.anyio
@pytest.mark.parametrize("echo", ["raw", "base64", "url quote", "json \\u escapes"])
async def test_a_token_in_a_custom_header_never_leaves(
    kind: str, echo: str, clients: list[ClientUnderTest], caplog: pytest.LogCaptureFixture
) -> None:
    """The rest provider sending the token as ``X-Api-Key: <token>`` (no scheme)."""
    caplog.set_level(logging.DEBUG, logger="runbridge")
    out = Outflow()
    config = {**REST_CONFIG, "auth": {"header": "X-Api-Key", "scheme": ""}}
    with hostile.HostileServer(echo_platform(ECHOES[echo], "x-api-key")) as server:
        client = make_client(kind, "rest", server.url, TOKEN, **config, **FAST)
        clients.append(client)
        for case in ("s500", "s404", "done"):
            await everything(client, out, case)
    assert server.requests and server.requests[0].headers["x-api-key"] == TOKEN
    out.records(r for r in caplog.records if r.name.startswith("runbridge"))
    leaks = out.leaks(TOKEN)
    assert not leaks, f"{len(leaks)} leaks:\n" + "\n".join(leaks[:20])


HTTPCORE_LOGS_HEADERS = (
    "httpcore's own DEBUG log prints each response's headers as received, before the client's "
    "one redaction point; runbridge's loggers are clean (the test above)"
)


@pytest.mark.anyio
async def test_http_library_debug_logs_of_an_echoed_header(
    clients: list[ClientUnderTest], caplog: pytest.LogCaptureFixture
) -> None:
    """Outside runbridge: with the root logger at DEBUG, the HTTP library's own loggers.

    The async client's default transport (aiohttp, runbridge/core/transport.py) logs no header;
    httpcore, under the sync client (and the async one without aiohttp), logs each response's
    headers as received: a known leak outside runbridge's reach, kept as a strict xfail."""
    if transport_name() == "httpx":  # aiohttp is not installed here
        pytest.xfail(HTTPCORE_LOGS_HEADERS)
    caplog.set_level(logging.DEBUG)
    out = Outflow()
    with hostile.HostileServer(echo_platform(ECHOES["raw"])) as server:
        client = make_client("async", "rest", server.url, TOKEN, **REST_CONFIG, **FAST)
        clients.append(client)
        await everything(client, out, "s404")
    seen = [r for r in caplog.records if not r.name.startswith("runbridge")]
    out.records(seen)
    assert not out.leaks(TOKEN)


@pytest.mark.anyio
@pytest.mark.xfail(strict=True, reason=HTTPCORE_LOGS_HEADERS)
async def test_httpcore_debug_log_of_an_echoed_header(
    clients: list[ClientUnderTest], caplog: pytest.LogCaptureFixture
) -> None:
    """The leak above, shown: the sync client's httpcore DEBUG log carries the echoed header
    (strict: this fails loudly the day httpcore stops logging it)."""
    caplog.set_level(logging.DEBUG)
    out = Outflow()
    with hostile.HostileServer(echo_platform(ECHOES["raw"])) as server:
        client = make_client("sync", "rest", server.url, TOKEN, **REST_CONFIG, **FAST)
        clients.append(client)
        await everything(client, out, "s404")
    out.records(r for r in caplog.records if r.name.startswith("httpcore"))
    assert not out.leaks(TOKEN)


@pytest.mark.parametrize("cls", [RunClient, AsyncRunClient])
@pytest.mark.parametrize("echo", list(ECHOES), ids=list(ECHOES))
def test_the_wandb_basic_header_is_redacted_in_every_form(cls: type, echo: str) -> None:
    """W&B sends ``Authorization: Basic base64("api:" + key)``: the client redacts the key and
    that header value, in every form the platform might echo them (the header value, the
    decoded ``api:KEY``, the key), in text and in bytes."""
    client = cls("wandb", "https://api.wandb.ai", WANDB_KEY)
    (header,) = (v for k, v in client._headers.items() if k.lower() == "authorization")
    assert header == "Basic " + _b64(f"api:{WANDB_KEY}")
    encode = ECHOES[echo]
    texts = [echoed(header, encode), echoed(f"api:{WANDB_KEY}", encode), encode(WANDB_KEY)]
    for text in texts:
        cleaned = client.redact(f"denied: {text}.")
        assert not [f for f in leak_forms(WANDB_KEY) if f in cleaned], cleaned
        assert header.partition(" ")[2] not in cleaned
        assert "***" in cleaned
        body = client._redactor.bytes(json.dumps({"detail": text}).encode()).decode()
        assert not [f for f in leak_forms(WANDB_KEY) if f in body], body


@pytest.mark.parametrize("echo", list(ECHOES), ids=list(ECHOES))
def test_the_redactor_masks_the_basic_header_value_directly(echo: str) -> None:
    header = "Basic " + _b64(f"api:{WANDB_KEY}")
    redactor = Redactor([WANDB_KEY, header])
    for text in (echoed(header, ECHOES[echo]), echoed(f"api:{WANDB_KEY}", ECHOES[echo])):
        for cleaned in (redactor.text(text), redactor.bytes(text.encode()).decode()):
            assert not [f for f in leak_forms(WANDB_KEY) if f in cleaned], cleaned
            assert header.partition(" ")[2] not in cleaned


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "rest.json"
    path.write_text(json.dumps(REST_CONFIG))
    return path


def run_cli(args: list[str], env: Mapping[str, str]) -> str:
    full: dict[str, str | None] = dict.fromkeys(
        ("RUNBRIDGE_PLATFORM", "RUNBRIDGE_URL", "RUNBRIDGE_TOKEN", "RUNBRIDGE_CONFIG")
    )
    full.update(env)
    result = CliRunner().invoke(cli, args, env=full, catch_exceptions=False)
    return "\n".join([result.output, result.stdout, result.stderr])


@pytest.mark.parametrize("echo", ["json \\u escapes", "url quote, / safe"])
def test_the_cli_with_debug_never_prints_the_token(echo: str, config_file: Path) -> None:
    with hostile.HostileServer(echo_platform(ECHOES[echo])) as server:
        env = {
            "RUNBRIDGE_URL": server.url,
            "RUNBRIDGE_TOKEN": TOKEN,
            "RUNBRIDGE_CONFIG": str(config_file),
        }
        fast = ["--timeout", "0.2", "--poll-first", "0.05"]
        outputs = [
            run_cli(["status", "rest:s404", "--debug"], env),
            run_cli(["--debug", "status", "rest:done", "--json"], env),
            run_cli(["wait", "rest:s500", *fast, "--debug"], env),
            run_cli(["--debug", "wait", "rest:busy", *fast, "--json"], env),
            run_cli(["wait", "rest:done", *fast, "--debug"], env),
            run_cli(["wait", "rest:garbled", *fast, "--debug"], env),
        ]
    assert server.requests
    text = "\n".join(outputs)
    assert "Traceback" in text and "***" in text  # the debug output was there, masked
    leaks = [form for form in leak_forms(TOKEN) if form in text]
    assert not leaks, (leaks, text[:3000])
