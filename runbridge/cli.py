"""The ``runbridge`` command line.

::

    runbridge launch PARAMS [--key KEY] [--wait]   start a run, print its reference
    runbridge status REF                           one snapshot of a run
    runbridge wait REF                             wait for a run to end
    runbridge cancel REF                           cancel a run
    runbridge emulate PLATFORM                     serve a platform emulator on loopback
    runbridge platforms                            the platforms that can be used
    runbridge demo                                 a few runs on the embedded emulators

Exit codes: 0 the run succeeded (or the command did its job); 1 the run ended in a state
the success policy does not accept; 2 a usage or configuration error; 3 the wait timed out
(the run keeps going); 4 any other runbridge error (authentication, not found, network,
platform), reported in one line on stderr (``--debug`` adds the traceback); 130 interrupted.

Importing this module is cheap: the emulators (starlette, uvicorn) are imported only by
``emulate`` and ``demo``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from .core.client import RunClient
from .core.errors import (
    AuthError,
    ConfigError,
    RunbridgeError,
    RunNotFound,
    TransportError,
    WaitTimeout,
)
from .core.flows import Event, WaitOptions
from .core.models import RunRef, RunStatus
from .core.providers.base import Provider
from .core.registry import available, get_provider_class
from .core.schedule import PollSchedule
from .core.states import DEFAULT_SUCCESS, RunState, parse_states

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_ERROR = 4
EXIT_INTERRUPTED = 130


# -- consoles ----------------------------------------------------------------------------------
def _console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _is_tty() -> bool:
    return _console().is_terminal


# -- errors -------------------------------------------------------------------------------------
def _redact(text: str, secret: str | None) -> str:
    """Every form of ``secret`` (raw, base64, escaped) masked: core's one redaction rule."""
    from .core.redact import Redactor

    return Redactor([secret]).text(text) if secret else text


def _describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an error that ends a command."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, WaitTimeout):
        return EXIT_TIMEOUT, f"timed out: {exc}"
    if isinstance(exc, AuthError):
        return EXIT_ERROR, f"authentication failed: {exc} (check --token or RUNBRIDGE_TOKEN)"
    if isinstance(exc, RunNotFound):
        return EXIT_ERROR, f"not found: {exc}"
    if isinstance(exc, TransportError):
        return EXIT_ERROR, f"cannot reach the platform: {exc}"
    if isinstance(exc, RunbridgeError):
        return EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    import httpx

    if isinstance(exc, httpx.InvalidURL):
        return EXIT_USAGE, f"error: invalid --url: {exc}"
    return (
        EXIT_ERROR,
        f"unexpected {type(exc).__name__}: {exc} (a bug in runbridge; --debug shows the traceback)",
    )


@contextlib.contextmanager
def _errors(debug: bool = False, secret: str | None = None) -> Iterator[None]:
    """Turn an error into one line on stderr and an exit code; never print ``secret``."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except KeyboardInterrupt:
        click.echo("runbridge: interrupted", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        code, line = _describe(exc)
        if debug or _debug_requested():
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            click.echo(_redact(text, secret).rstrip(), err=True)
        click.echo(_redact(f"runbridge: {line}", secret), err=True)
        raise click.exceptions.Exit(code) from None


def _debug_requested() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.params.get("debug"))


# -- input parsing ------------------------------------------------------------------------------
def _read_arg(text: str, what: str) -> str:
    """``-`` reads stdin, ``@FILE`` reads a file, anything else is the value itself."""
    if text in ("-", "@-"):
        return sys.stdin.read()
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {what} from {path}: {exc.strerror or exc}") from None
    return text


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_options(config_file: Path | None, pairs: Sequence[str]) -> dict[str, Any]:
    """Provider options: the ``--config`` JSON object, then each ``--option KEY=VALUE`` on top.

    A dotted key sets a nested value (``-o states.paused=RUNNING``); VALUE is JSON when it
    parses as JSON, else a string.
    """
    options: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = json.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"cannot read --config {config_file}: {exc.strerror or exc}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"--config {config_file} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"--config {config_file} must hold a JSON object of provider options, "
                f"not {type(data).__name__}"
            )
        options.update(data)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got {pair!r}")
        *parents, leaf = key.split(".")
        target = options
        for part in parents:
            child = target.get(part)
            target[part] = dict(child) if isinstance(child, dict) else {}
            target = target[part]
        target[leaf] = _json_value(raw)
    return options


def _parse_params(text: str) -> dict[str, Any]:
    raw = _read_arg(text, "launch parameters")
    try:
        params = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"the launch parameters are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(
            f"the launch parameters must be a JSON object, not {type(params).__name__}"
        )
    return params


def _parse_ref(text: str) -> RunRef:
    """A run reference: its string form (``rest:<id>``, ``langgraph:<id>?thread_id=...``), its
    JSON, or the JSON that ``launch --json`` / ``status --json`` print (which hold a ``ref``)."""
    raw = _read_arg(text, "the run reference").strip()
    if not raw:
        raise ConfigError("the run reference is empty")
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"the run reference is not valid JSON: {exc}") from None
        if isinstance(data, dict) and "platform" not in data and "ref" in data:
            data = data["ref"]
        return RunRef.coerce(data)
    return RunRef.parse(raw)


# -- common options -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Common:
    """The connection options every run command takes."""

    platform: str | None
    platform_from_env: bool
    url: str | None
    token: str | None = dataclasses.field(repr=False)
    options: dict[str, Any]
    as_json: bool
    debug: bool

    def resolve_platform(self, ref: RunRef | None = None) -> str:
        if ref is not None:
            if self.platform and self.platform != ref.platform and not self.platform_from_env:
                raise ConfigError(
                    f"--platform {self.platform} does not match the run reference, which is a "
                    f"{ref.platform} run"
                )
            return ref.platform
        if not self.platform:
            raise ConfigError(
                "no platform given: pass --platform/-p or set RUNBRIDGE_PLATFORM "
                f"(available: {', '.join(available())})"
            )
        return self.platform

    def client(self, platform: str) -> RunClient:
        if not self.url:
            raise ConfigError(
                "no URL given: pass --url or set RUNBRIDGE_URL (the platform's API base URL)"
            )
        return RunClient(platform, self.url, self.token, **self.options)


def _common_options(func: F) -> F:
    """Add the connection options to a run command, which receives them as ``common``, and
    turn its errors into a message and an exit code (see :func:`_errors`)."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        platform: str | None,
        url: str | None,
        token: str | None,
        option: tuple[str, ...],
        config_file: Path | None,
        as_json: bool,
        debug: bool,
        **kwargs: Any,
    ) -> Any:
        ctx = click.get_current_context()
        if debug:
            _setup_logging(debug)
        with _errors(debug, token):
            common = Common(
                platform=platform.strip() if platform else None,
                platform_from_env=ctx.get_parameter_source("platform")
                is ParameterSource.ENVIRONMENT,
                url=url.strip() if url else None,
                token=token or None,
                options=_parse_options(config_file, option),
                as_json=as_json,
                debug=debug,
            )
            return func(common, *args, **kwargs)

    decorators = [
        click.option(
            "--platform",
            "-p",
            envvar="RUNBRIDGE_PLATFORM",
            show_envvar=True,
            metavar="NAME",
            help="Platform name (see `runbridge platforms`). Taken from REF where there is one.",
        ),
        click.option(
            "--url",
            envvar="RUNBRIDGE_URL",
            show_envvar=True,
            metavar="URL",
            help="Base URL of the platform's API.",
        ),
        click.option(
            "--token",
            envvar="RUNBRIDGE_TOKEN",
            show_envvar=True,
            show_default=False,
            metavar="TOKEN",
            help="API token. Prefer the environment variable: a command line is visible to others.",
        ),
        click.option(
            "--option",
            "-o",
            multiple=True,
            metavar="KEY=VALUE",
            help="A provider option (repeatable); VALUE is JSON if it parses, else a string. "
            "A dotted KEY sets a nested value.",
        ),
        click.option(
            "--config",
            "config_file",
            envvar="RUNBRIDGE_CONFIG",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A JSON file of provider options (e.g. the rest provider's configuration).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts."),
        click.option("--debug", is_flag=True, help="Show the traceback of an error."),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class WaitSettings:
    wait_timeout: float | None
    run_timeout: float | None
    poll: PollSchedule | None
    use_join: bool
    error_window: float | None
    success: frozenset[RunState]


def _wait_options(func: F) -> F:
    """Add the wait options; the command receives ``wait_settings`` (checked before any I/O)."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        wait_timeout: float | None,
        run_timeout: float | None,
        poll_first: float | None,
        poll_cap: float | None,
        no_join: bool,
        error_window: float | None,
        success: str | None,
        **kwargs: Any,
    ) -> Any:
        with _errors(kwargs.get("debug", False), kwargs.get("token")):
            poll = None
            if poll_first is not None or poll_cap is not None:
                first, cap = PollSchedule.first, PollSchedule.cap
                if poll_first is not None:
                    first = poll_first
                    cap = max(cap, first)
                if poll_cap is not None:
                    cap = poll_cap
                    first = first if poll_first is not None else min(first, cap)
                poll = PollSchedule(first=first, cap=cap)
            settings = WaitSettings(
                wait_timeout=wait_timeout,
                run_timeout=run_timeout,
                poll=poll,
                use_join=not no_join,
                error_window=error_window,
                success=parse_states(success) if success else DEFAULT_SUCCESS,
            )
        return func(*args, wait_settings=settings, **kwargs)

    seconds = click.FloatRange(min=0)
    decorators = [
        click.option(
            "--wait-timeout",
            "--timeout",
            "wait_timeout",
            type=seconds,
            metavar="S",
            help="Stop waiting after S seconds (exit 3). The run keeps going.",
        ),
        click.option(
            "--run-timeout",
            type=seconds,
            metavar="S",
            help="Cancel the run once it is S seconds old; it then ends TIMED_OUT.",
        ),
        click.option(
            "--poll-first",
            type=seconds,
            metavar="S",
            help=f"First poll interval [default: {PollSchedule.first:g}].",
        ),
        click.option(
            "--poll-cap",
            type=seconds,
            metavar="S",
            help=f"Longest poll interval [default: {PollSchedule.cap:g}].",
        ),
        click.option(
            "--no-join", is_flag=True, help="Poll only; never use the platform's blocking wait."
        ),
        click.option(
            "--error-window",
            type=seconds,
            metavar="S",
            help="How long transient errors (5xx, 429, network) are tolerated "
            f"[default: {WaitOptions.error_window:g}].",
        ),
        click.option(
            "--success",
            metavar="STATES",
            help="Comma-separated terminal states that count as success [default: SUCCEEDED].",
        ),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


# -- output -------------------------------------------------------------------------------------
def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


_STATE_STYLE = {
    RunState.PENDING: "yellow",
    RunState.RUNNING: "cyan",
    RunState.SUCCEEDED: "bold green",
    RunState.FAILED: "bold red",
    RunState.CANCELLED: "magenta",
    RunState.TIMED_OUT: "bold red",
    RunState.PARTIAL: "bold yellow",
    RunState.UNKNOWN: "dim",
}


def state_text(state: RunState, raw: str | None = None) -> Text:
    """``STATE (raw)``, coloured by state; shared with the demo."""
    from rich.text import Text

    text = Text(state.value, style=_STATE_STYLE.get(state, ""))
    if raw is not None:
        text.append(f" ({raw})", style="dim")
    return text


def _status_table(status: RunStatus) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("run", Text(status.ref.to_string()))
    table.add_row("state", state_text(status.state, status.raw_state))
    table.add_row("terminal", "yes" if status.is_terminal else "no")
    if status.url:
        table.add_row("url", Text(status.url))
    if status.message:
        table.add_row("message", Text(status.message))
    for name in ("created_at", "updated_at", "ended_at"):
        value = getattr(status, name)
        if value is not None:
            table.add_row(name.replace("_", " "), value.isoformat())
    duration = _run_duration(status)
    if duration is not None:
        table.add_row("duration", _fmt_seconds(duration))
    if status.outputs:
        table.add_row("outputs", Text(json.dumps(dict(status.outputs), indent=2, default=str)))
    return table


def _run_duration(status: RunStatus) -> float | None:
    if status.created_at is None:
        return None
    end = status.ended_at or (status.updated_at if status.is_terminal else None)
    return (end - status.created_at).total_seconds() if end is not None else None


def _summary(
    status: RunStatus, waited: float, checks: int, success: frozenset[RunState]
) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    ok = status.succeeded(success)
    head = Text("✔ " if ok else "✘ ", style="bold green" if ok else "bold red")
    head.append(f"{status.ref.platform} run {status.ref.id} ended ")
    head.append(state_text(status.state, status.raw_state))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    duration = _run_duration(status)
    if duration is not None:
        table.add_row("  duration", _fmt_seconds(duration))
    table.add_row("  waited", f"{_fmt_seconds(waited)}, {checks} check{'s' if checks != 1 else ''}")
    if status.url:
        table.add_row("  url", Text(status.url))
    if status.message:
        table.add_row("  message", Text(status.message))
    if status.outputs:
        table.add_row("  outputs", Text(json.dumps(dict(status.outputs), default=str)))
    return Group(head, table)


class _WaitView:
    """Follows a wait through the client's events; renders live (tty) or as lines (not a tty)."""

    def __init__(
        self, ref: RunRef, echo: Callable[[str], None] | None = None, joins: bool = False
    ) -> None:
        from rich.spinner import Spinner

        self.ref = ref
        self.joins = joins
        self.echo = echo
        self.started = time.monotonic()
        self.status: RunStatus | None = None
        self.checks = 0
        self.next_at: float | None = None
        self.note: str | None = None
        self.spinner = Spinner("dots", style="cyan")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def hook(self, event: Event) -> None:
        now = time.monotonic()
        kind = event.kind
        if kind == "status":
            self.status = event.status
            self.checks += 1
            self.next_at = None
            self.note = None
        elif kind == "state_changed" and event.status is not None:
            status = event.status
            line = f"[{_fmt_seconds(self.elapsed()):>6}] {status.state.value} ({status.raw_state})"
            if status.message:
                line += f": {status.message}"
            self._line(line)
        elif kind == "sleep":
            self.next_at = now + (event.delay or 0.0)
        elif kind == "retry":
            self.next_at = now + (event.delay or 0.0)
            self.note = f"{event.error}; retrying"
            self._line(
                f"[{_fmt_seconds(self.elapsed()):>6}] {event.error}; retrying in {event.delay or 0:.1f}s"
            )
        elif kind == "transient_error":
            self.note = f"check failed ({event.error}); will try again"
            self._line(
                f"[{_fmt_seconds(self.elapsed()):>6}] check failed, will try again: {event.error}"
            )
        elif kind == "cancel_requested":
            self.note = "the run exceeded --run-timeout: cancelling it"
            self._line(
                f"[{_fmt_seconds(self.elapsed()):>6}] the run exceeded --run-timeout: cancelling it"
            )

    def _line(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def __rich__(self) -> RenderableType:
        from rich.table import Table
        from rich.text import Text

        head = Text(f"waiting for {self.ref.platform} run {self.ref.id}", style="bold")
        line = Text()
        if self.status is None:
            line.append("checking…", style="dim")
        else:
            line.append(state_text(self.status.state, self.status.raw_state))
        line.append(f"  ·  elapsed {_fmt_seconds(self.elapsed())}")
        line.append(f"  ·  {self.checks} check{'s' if self.checks != 1 else ''}", style="dim")
        remaining = None if self.next_at is None else self.next_at - time.monotonic()
        if remaining is not None and remaining > 0:
            line.append(
                f"  ·  next check in {remaining:.0f}s"
                if remaining >= 10
                else f"  ·  next check in {remaining:.1f}s",
                style="dim",
            )
        elif self.status is not None and self.joins:
            line.append("  ·  joined (long poll)", style="dim")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        grid.add_row(self.spinner, head)
        grid.add_row("", line)
        if self.note:
            grid.add_row("", Text(self.note, style="yellow"))
        return grid


def _wait_and_report(
    common: Common, client: RunClient, ref: RunRef, settings: WaitSettings
) -> tuple[RunStatus, int]:
    """Wait for ``ref`` with progress and print the summary (not with --json); returns the
    terminal status and the exit code per the success policy."""
    out = _console(stderr=common.as_json)
    live = out.is_terminal and not common.as_json
    joins = settings.use_join and type(client.provider).join is not Provider.join
    view = _WaitView(
        ref, None if live else functools.partial(click.echo, err=common.as_json), joins
    )
    client.hooks.append(view.hook)
    kwargs: dict[str, Any] = {
        "run_timeout": settings.run_timeout,
        "poll": settings.poll,
        "use_join": settings.use_join,
        "error_window": settings.error_window,
    }
    try:
        if live:
            from rich.live import Live

            with Live(view, console=out, refresh_per_second=8, transient=True):
                status = client.wait(ref, settings.wait_timeout, **kwargs)
        else:
            status = client.wait(ref, settings.wait_timeout, **kwargs)
    except WaitTimeout as exc:
        if common.as_json and exc.last_status is not None:
            _print_json(exc.last_status.to_dict())
        raise
    except KeyboardInterrupt:
        click.echo(
            f"runbridge: stopped waiting; the run keeps going (`runbridge cancel '{ref}'` stops it)",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if not common.as_json:
        out.print(_summary(status, view.elapsed(), view.checks, settings.success))
    return status, EXIT_OK if status.succeeded(settings.success) else EXIT_RUN_FAILED


# -- the commands -------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="runbridge", prog_name="runbridge")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def cli(debug: bool) -> None:
    """Launch runs on external platforms and wait for their terminal state.

    Try `runbridge demo`; serve a platform emulator with `runbridge emulate rest`.
    Exit codes: 0 success, 1 the run did not succeed, 2 usage or configuration error,
    3 the wait timed out, 4 any other error.
    """
    _setup_logging(debug)


def _setup_logging(debug: bool) -> None:
    """The commands report what runbridge's log says; --debug shows the log itself, on stderr,
    for the duration of the command."""
    logger = logging.getLogger("runbridge")
    if not debug:
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())  # no last-resort warnings over the display
        return
    if any(isinstance(h, _DebugHandler) for h in logger.handlers):
        return
    handler = _DebugHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().call_on_close(restore)


class _DebugHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (which tests and wrappers may swap)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@cli.command()
@click.argument("params", metavar="PARAMS_JSON_OR_@FILE")
@click.option(
    "--key", metavar="KEY", help="Idempotency key: launching again with it re-attaches to the run."
)
@click.option(
    "--wait", "wait_", is_flag=True, help="Wait for the run to end (exit code as for `wait`)."
)
@_wait_options
@_common_options
def launch(
    common: Common, params: str, key: str | None, wait_: bool, wait_settings: WaitSettings
) -> None:
    """Start a run and print its reference (REF for the other commands).

    PARAMS is the platform's launch parameters as a JSON object, or @FILE (@- for stdin).
    """
    launch_params = _parse_params(params)
    platform = common.resolve_platform()
    with common.client(platform) as client:
        ref = client.launch(launch_params, key=key)
        if common.as_json and not wait_:
            _print_json({"ref": ref.to_dict(), "ref_string": ref.to_string()})
            return
        if not wait_:
            click.echo(ref.to_string())
            url = _url_of(client, ref)
            if url:
                click.echo(f"url: {url}", err=not _is_tty())
            return
        if not common.as_json:
            click.echo(ref.to_string())
        final, code = _wait_and_report(common, client, ref, wait_settings)
        if common.as_json:
            _print_json(
                {"ref": ref.to_dict(), "ref_string": ref.to_string(), "status": final.to_dict()}
            )
    raise click.exceptions.Exit(code)


def _url_of(client: RunClient, ref: RunRef) -> str | None:
    """The run's page, when the platform reports one (best effort: one status call)."""
    try:
        return client.get(ref).url
    except RunbridgeError:
        return None


@cli.command()
@click.argument("ref", metavar="REF")
@_common_options
def status(common: Common, ref: str) -> None:
    """Show one snapshot of a run.

    REF is the reference `launch` printed (`rest:<id>`, `langgraph:<id>?thread_id=...`), its
    JSON, @FILE or - (stdin). The platform comes from REF.
    """
    run = _parse_ref(ref)
    with common.client(common.resolve_platform(run)) as client:
        snapshot = client.get(run)
    if common.as_json:
        _print_json(snapshot.to_dict())
    else:
        _console().print(_status_table(snapshot))


@cli.command()
@click.argument("ref", metavar="REF")
@_wait_options
@_common_options
def wait(common: Common, ref: str, wait_settings: WaitSettings) -> None:
    """Wait for a run to end; exit 0 when it succeeded, 1 when it ended otherwise, 3 on --wait-timeout.

    On a terminal, shows the run live; otherwise prints a line per state change.
    """
    run = _parse_ref(ref)
    with common.client(common.resolve_platform(run)) as client:
        final, code = _wait_and_report(common, client, run, wait_settings)
        if common.as_json:
            _print_json(final.to_dict())
    raise click.exceptions.Exit(code)


@cli.command()
@click.argument("ref", metavar="REF")
@_common_options
def cancel(common: Common, ref: str) -> None:
    """Ask the platform to cancel a run.

    A run that has already ended is left as it is: the command says so (with its end state)
    and exits 0 without asking the platform to cancel it.
    """
    run = _parse_ref(ref)
    ended: RunStatus | None = None
    with common.client(common.resolve_platform(run)) as client:
        before = client.get(run)
        if before.state.is_terminal:
            ended = before
        else:
            client.cancel(run)
    if common.as_json:
        data: dict[str, Any] = {
            "ref": run.to_dict(),
            "ref_string": run.to_string(),
            "cancel_requested": ended is None,
        }
        if ended is not None:
            data["already_ended"] = True
            data["status"] = ended.to_dict()
        _print_json(data)
    elif ended is not None:
        raw = f" ({ended.raw_state})" if ended.raw_state else ""
        click.echo(
            f"{run.to_string()} had already ended: {ended.state.value}{raw}; nothing to cancel"
        )
    else:
        click.echo(f"cancel requested for {run.to_string()}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
def platforms(as_json: bool) -> None:
    """List the platforms that can be used."""
    rows = []
    for name in available():
        try:
            cls = get_provider_class(name)
        except ConfigError as exc:
            rows.append({"name": name, "loads": False, "description": str(exc)})
            continue
        rows.append({"name": name, "loads": True, "description": _first_sentence(cls.__doc__)})
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
    table.add_column("platform")
    table.add_column("provider", overflow="fold")
    for row in rows:
        description = Text(str(row["description"]))
        if not row["loads"]:
            description = Text(f"not loadable: {row['description']}", style="dim")
        table.add_row(str(row["name"]), description)
    _console().print(table)


def _first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph (whole, never cut mid-sentence)."""
    paragraph = " ".join(inspect.cleandoc(doc or "").split("\n\n", 1)[0].split())
    match = re.search(r"[.!?](?=\s+[A-Z`*])", paragraph)
    return paragraph[: match.end()] if match else paragraph


def _require_testing() -> None:
    missing = []
    for module in ("starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(
            f"the emulators need the 'testing' extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'runbridge[testing]'"
        )


@cli.command()
@click.argument("platform", required=False)
@click.option(
    "--platform",
    "platform_option",
    metavar="PLATFORM",
    help="The platform (the same as the PLATFORM argument).",
)
@click.option(
    "--script",
    "scripts",
    metavar="JSON",
    multiple=True,
    help='A run script: {"steps": [["running", 2]], "final": "failed", "message": "..."} sets '
    'the default one; {"scripts": [...], "default": {...}} queues scripts (as POST '
    "/_runbridge/scripts). Repeatable.",
)
@click.option(
    "--fault",
    "faults",
    metavar="JSON",
    multiple=True,
    help='A fault to inject: {"kind": "status", "status": 503, "on": "status", "times": 2} '
    "(or a list of them). Repeatable.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port to listen on [default: a free one].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--token",
    "emu_token",
    metavar="TOKEN",
    help="Refuse requests without this token, as the platform would.",
)
@click.option(
    "--quiet", "-q", is_flag=True, help="Do not print the requests the emulator receives."
)
def emulate(
    platform: str | None,
    platform_option: str | None,
    scripts: tuple[str, ...],
    faults: tuple[str, ...],
    port: int,
    host: str,
    emu_token: str | None,
    quiet: bool,
) -> None:
    """Serve an emulator of PLATFORM's API until Ctrl-C (needs the `testing` extra).

    It also serves the control API under /_runbridge/ (no auth): POST scripts and faults, GET
    record, POST runs/ID/cancel, POST reset; see docs/testing.md.
    """
    with _errors(secret=emu_token):
        if platform and platform_option and platform != platform_option:
            raise ConfigError(
                f"two platforms given: {platform!r} and --platform {platform_option!r}"
            )
        platform = platform or platform_option
        if not platform:
            raise ConfigError("name the platform: runbridge emulate --platform rest")
        _require_testing()
        from .testing import create_emulator, serve

        try:
            emulator = create_emulator(platform, token=emu_token)
        except ImportError as exc:
            raise ConfigError(f"no {platform} emulator in this installation: {exc}") from None
        _control_options(emulator, scripts, faults)

        with contextlib.ExitStack() as stack:
            # `kill` (SIGTERM) stops it as cleanly as Ctrl-C does: the temp config goes too
            previous = signal.signal(signal.SIGTERM, _interrupt)
            stack.callback(signal.signal, signal.SIGTERM, previous)
            try:
                emu = stack.enter_context(serve(emulator, host=host, port=port))
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                ) from None
            out = _console()
            # one line, never wrapped: scripts read the URL from it
            click.echo(
                f"{platform} emulator listening on {emu.base_url}  "
                f"(control API: {emu.base_url}/_runbridge/; Ctrl-C to stop)"
            )
            sys.stdout.flush()
            env = f"RUNBRIDGE_PLATFORM={platform} RUNBRIDGE_URL={emu.base_url}"
            example = _EXAMPLES.get(platform)
            if platform == "rest":
                from .testing.rest import REST_CONFIG

                config_path = _write_temp_json(REST_CONFIG, "runbridge-rest-")
                stack.callback(_unlink, config_path)
                env += f" RUNBRIDGE_CONFIG={config_path}"
                out.print(
                    f"The rest provider's configuration is in {config_path}.",
                    markup=False,
                    soft_wrap=True,
                )
            out.print("Point the CLI at it, in another shell:")
            out.print(f"  export {env}", markup=False, soft_wrap=True)
            if emu_token:
                out.print(
                    "  export RUNBRIDGE_TOKEN=...   (the token given to --token)", markup=False
                )
            if example:
                out.print(f"  {example}", markup=False, soft_wrap=True)
            seen = 0
            try:
                while True:
                    time.sleep(0.2)
                    if quiet:
                        continue
                    with emu.lock:
                        if len(emu.requests) < seen:  # a control API reset forgot them
                            seen = 0
                        new = emu.requests[seen:]
                        seen = len(emu.requests)
                    for request in new:
                        query = f"?{request.query}" if request.query else ""
                        click.echo(
                            f"{time.strftime('%H:%M:%S')}  {request.method} {request.path}{query}"
                        )
            except KeyboardInterrupt:
                click.echo("stopped")


def _control_options(emulator: Any, scripts: Sequence[str], faults: Sequence[str]) -> None:
    """Apply ``emulate``'s ``--script`` and ``--fault`` options (the control API's parsing)."""
    from .testing._control import ControlError, load_json, parse_faults, parse_scripts

    def load(option: str, text: str) -> Any:
        try:
            return load_json(text)
        except ControlError as exc:
            raise ConfigError(f"{option}: {exc.problem}: {text[:80]!r}") from None

    try:
        for text in scripts:
            given = load("--script", text)
            if isinstance(given, dict) and ("scripts" in given or "default" in given):
                queued, default = parse_scripts(emulator, given)
            else:
                queued, default = parse_scripts(emulator, {"default": given})
            emulator.script(*queued)
            if default is not None:
                emulator.set_default(default, survive_reset=True)
        for text in faults:
            given = load("--fault", text)
            if isinstance(given, list):
                given = {"faults": given}
            elif isinstance(given, dict) and "faults" not in given and "clear" not in given:
                given = {"faults": [given]}
            added, _ = parse_faults(emulator, given)
            for fault in added:
                emulator.inject(fault)
    except ControlError as exc:
        option = "--script" if "script" in exc.field or "default" in exc.field else "--fault"
        raise ConfigError(f"{option}: {exc}") from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


_EXAMPLES = {
    "rest": """runbridge launch '{"job": "nightly"}' --wait""",
    "langgraph": """runbridge launch '{"assistant_id": "agent", "input": {"input": {"sleep": 2}}}' --wait""",
    "flyte": """runbridge launch '{"task": "wf.main", "version": "v1", "inputs": {"n": 3}}' -o project=flytesnacks -o domain=development --wait""",
    "wandb": """runbridge launch '{"docker_image": "trainer:latest"}' -o entity=runbridge -o project=demo -o queue=default --wait""",
    "vi": """runbridge launch '{"flow": {"name": "demo", "schema": "v1", "tolerations": {}, "settings": {}, "blocks": []}}' -o organization_id=org-demo --wait""",
    "lume": """runbridge launch '{"flow_version": "invoice_processor:v3", "source_path": "s3://invoices/batch-001.csv", "force_rerun": true}' --wait""",
}
"""A launch each emulator understands, printed by ``emulate``."""


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _write_temp_json(data: Any, prefix: str) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    return Path(name)


@cli.command()
def demo() -> None:
    """Launch a few runs on the embedded emulators and follow them (loopback only, ~10 s)."""
    with _errors():
        _require_testing()
        from .demo import run_demo

        code = run_demo(_console())
    raise click.exceptions.Exit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console entry point (``runbridge``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="runbridge")
    raise SystemExit(0)  # pragma: no cover - cli.main exits itself
