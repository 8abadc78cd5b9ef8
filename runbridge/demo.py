"""``runbridge demo``: a few runs on the embedded emulators, followed live.

Self-contained and offline: the emulators listen on loopback only. It starts the ``rest``
emulator (and the ``langgraph`` one where this installation has it), scripts a handful of
runs (one succeeds, one fails with a message, one meets a lost launch answer, a 429 with
Retry-After and a 503, one is cancelled for exceeding ``run_timeout``), launches them all at
once on :class:`~runbridge.AsyncRunClient` and shows them until every run has ended. Then a
summary, and how many launches each emulator recorded: one per run, no duplicates.

Needs the ``testing`` extra (starlette, uvicorn); imported only by ``runbridge demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import importlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .core.client import AsyncRunClient
from .core.errors import RunbridgeError
from .core.flows import Event
from .core.models import RunRef, RunStatus
from .core.providers.base import Provider
from .core.schedule import PollSchedule
from .core.states import RunState

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from .testing import Emulator

__all__ = ["run_demo"]

POLL = PollSchedule(first=0.25, factor=1.5, cap=1.5)
"""Fast checks, so the demo ends in seconds (the default starts at 1 s and backs off to 10 s)."""
WAIT_TIMEOUT = 30.0
"""A safety net: no demo run should take this long."""

_current: contextvars.ContextVar[DemoRun | None] = contextvars.ContextVar(
    "runbridge_demo_run", default=None
)
"""The run whose task is active: hooks are called inside that task, so events find their run."""


@dataclasses.dataclass(eq=False)
class DemoRun:
    """One scripted run: what it should do, and what has been seen of it so far."""

    platform: str
    name: str
    story: str
    expect: RunState
    params: dict[str, Any]
    run_timeout: float | None = None
    key: str | None = None
    after_launch: Callable[[RunRef], None] | None = None

    ref: RunRef | None = None
    status: RunStatus | None = None
    error: str | None = None
    """An error that ended this run's task (the wait itself failed)."""
    started: float = 0.0
    ended: float | None = None
    checks: int = 0
    retries: int = 0
    note: str = "launching"
    next_at: float | None = None
    joins: bool = False
    """The platform has a blocking wait (join): between checks the wait holds one open."""

    @property
    def elapsed(self) -> float:
        if not self.started:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    @property
    def done(self) -> bool:
        return self.ended is not None

    @property
    def as_expected(self) -> bool:
        return self.status is not None and self.status.state is self.expect

    @property
    def short_id(self) -> str:
        if self.ref is None:
            return "-"
        return self.ref.id[-8:]  # the tail: time-ordered ids (uuid7) share their head


# -- the scenario --------------------------------------------------------------------------------
def _rest_runs() -> tuple[list[DemoRun], dict[str, Any]]:
    """The rest runs, and the emulator script of each job."""
    from .testing import Script

    scripts = {
        "nightly-etl": Script(
            [("queued", 0.8), ("running", 3.0)], final="succeeded", outputs={"rows": 18204}
        ),
        "train-model": Script(
            [("queued", 0.5), ("running", 3.5)],
            final="failed",
            message="step 3/5 'fit': CUDA out of memory (tried to allocate 2.00 GiB)",
        ),
        "flaky-report": Script(
            [("queued", 0.5), ("running", 4.0)], final="succeeded", outputs={"pages": 12}
        ),
        "stuck-export": Script([("queued", 0.5), ("running", 600.0)], final="succeeded"),
    }
    runs = [
        DemoRun("rest", "nightly-etl", "succeeds", RunState.SUCCEEDED, {"job": "nightly-etl"}),
        DemoRun(
            "rest", "train-model", "fails with a message", RunState.FAILED, {"job": "train-model"}
        ),
        DemoRun(
            "rest",
            "flaky-report",
            "launch answer lost (503); checks meet 429 + Retry-After, then 503",
            RunState.SUCCEEDED,
            {"job": "flaky-report"},
        ),
        DemoRun(
            "rest",
            "stuck-export",
            "never ends: cancelled at run_timeout=6s",
            RunState.TIMED_OUT,
            {"job": "stuck-export"},
            run_timeout=6.0,
        ),
    ]
    return runs, scripts


def _langgraph_runs() -> list[DemoRun]:
    """The langgraph runs. The emulator runs the test graph's directives from the input
    (``sleep`` seconds, then ``fail`` with a message), so each run's fate is its own."""
    return [
        DemoRun(
            "langgraph",
            "agent-answer",
            "succeeds; the wait blocks on the platform's join",
            RunState.SUCCEEDED,
            {"assistant_id": "agent", "input": {"input": {"question": "why?", "sleep": 3.0}}},
        ),
        DemoRun(
            "langgraph",
            "agent-error",
            "the graph raises: its error is the message",
            RunState.FAILED,
            {
                "assistant_id": "agent",
                "input": {"input": {"sleep": 2.0, "fail": "tool 'search' returned no results"}},
            },
        ),
    ]


def _rest_emulator(scripts: dict[str, Any], token: str) -> Emulator:
    """A rest emulator that gives each job its script, whatever order the launches arrive in."""
    from .testing import EmulatedRun, Script
    from .testing.rest import RestEmulator

    class DemoRestEmulator(RestEmulator):
        def add_run(
            self, script: Script | None = None, run_id: str | None = None, **data: Any
        ) -> EmulatedRun:
            return super().add_run(script or scripts.get(str(data.get("job"))), run_id, **data)

    return DemoRestEmulator(token=token)


def _langgraph_emulator() -> tuple[Emulator | None, str | None]:
    """The langgraph emulator, or None and why, where this installation has none yet."""
    try:
        importlib.import_module("runbridge.testing.langgraph")
        from .core.registry import get_provider_class
        from .testing import EMULATORS, create_emulator
    except ImportError:
        return None, "not in this installation"
    if "langgraph" not in EMULATORS:
        return None, "not in this installation"
    try:
        get_provider_class("langgraph")
        return create_emulator("langgraph"), None
    except Exception as exc:
        return None, f"cannot start: {exc}"


# -- following runs through the client's events --------------------------------------------------
def _on_event(event: Event, echo: Callable[[DemoRun, str], None] | None) -> None:
    run = _current.get()
    if run is None:
        return
    now = time.monotonic()
    kind = event.kind
    if kind in ("launched", "reattached") and event.ref is not None:
        run.ref = event.ref
        run.note = "launched"
        if echo:
            echo(run, f"{'launched' if kind == 'launched' else 're-attached to'} {event.ref}")
    elif kind == "status" and event.status is not None:
        run.status = event.status
        run.checks += 1
        run.next_at = None
        run.note = ""
    elif kind == "state_changed" and event.status is not None:
        if echo:
            status = event.status
            echo(
                run,
                f"{status.state.value} ({status.raw_state})"
                + (f": {status.message}" if status.message else ""),
            )
    elif kind == "sleep":
        run.next_at = now + (event.delay or 0.0)
    elif kind == "retry":
        run.retries += 1
        run.next_at = now + (event.delay or 0.0)
        what = "launch" if run.ref is None else "check"
        run.note = f"{event.error}, retry {what} in {event.delay or 0:.1f}s"
        if echo:
            again = "with the same idempotency key " if run.ref is None and run.key else ""
            echo(run, f"{what} failed ({event.error}); retrying {again}in {event.delay or 0:.1f}s")
    elif kind == "transient_error":
        run.note = f"check failed: {event.error}"
        if echo:
            echo(run, f"check failed, will try again: {event.error}")
    elif kind == "cancel_requested":
        run.note = f"run_timeout={run.run_timeout:g}s: cancelling"
        if echo:
            echo(run, f"exceeded run_timeout={run.run_timeout:g}s: cancel requested")


async def _follow(
    client: AsyncRunClient, run: DemoRun, echo: Callable[[DemoRun, str], None] | None
) -> None:
    """Launch ``run`` and wait for it to end, recording what happens on ``run``."""
    _current.set(run)
    run.started = time.monotonic()
    run.joins = type(client.provider).join is not Provider.join
    try:
        run.ref = await client.launch(run.params, key=run.key)
        if run.after_launch is not None:
            run.after_launch(run.ref)
        status = await client.wait(run.ref, WAIT_TIMEOUT, run_timeout=run.run_timeout, poll=POLL)
        last = run.status
        run.status = status
        run.note = status.message or ""
        if echo and (last is None or last.state is not status.state):
            # the wait's verdict differs from the platform's last word (run_timeout)
            echo(run, f"ended {status.state.value} ({status.raw_state}): {status.message}")
    except RunbridgeError as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        run.note = run.error
        if echo:
            echo(run, run.error)
    finally:
        run.ended = time.monotonic()
        run.next_at = None


# -- display -------------------------------------------------------------------------------------
class _Board:
    """The live table of every run."""

    def __init__(self, runs: list[DemoRun]) -> None:
        from rich.spinner import Spinner

        self.runs = runs
        self.started = time.monotonic()
        self.spinner = Spinner("dots", style="cyan")

    def __rich__(self) -> RenderableType:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        from .cli import state_text

        table = Table(
            title=f"{len(self.runs)} runs, {time.monotonic() - self.started:.1f}s",
            title_justify="left",
            title_style="bold",
            header_style="bold",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            padding=(0, 1),
            collapse_padding=True,
            expand=True,
        )
        table.add_column("platform", no_wrap=True)
        table.add_column("job", no_wrap=True)
        table.add_column("run", no_wrap=True, min_width=8)
        table.add_column("state", no_wrap=True, min_width=11)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("checks", justify="right", no_wrap=True)
        table.add_column("notes", no_wrap=True, overflow="ellipsis", ratio=1)
        now = time.monotonic()
        for run in self.runs:
            state = Text()
            frame = self.spinner.render(now) if not run.done else Text("•", style="dim")
            state.append(frame if isinstance(frame, Text) else "…")
            state.append(" ")
            if run.status is not None:
                state.append(state_text(run.status.state))
            else:
                waiting = "launching" if run.ref is None else "checking"
                state.append("error" if run.error else waiting, style="red" if run.error else "dim")
            note = run.note
            if not note and not run.done and run.status is not None:
                if run.next_at is not None and run.next_at > now:
                    note = f"next check {run.next_at - now:.1f}s"
                elif run.joins:
                    note = "joined (long poll)"
            table.add_row(
                run.platform,
                run.name,
                run.short_id,
                state,
                f"{run.elapsed:.1f}s",
                str(run.checks),
                Text(note, style="dim" if not run.done else ""),
            )
        return table


def _summary(runs: list[DemoRun]) -> RenderableType:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from .cli import state_text

    table = Table(
        title="Summary",
        title_justify="left",
        title_style="bold",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    table.add_column("platform", no_wrap=True)
    table.add_column("job", no_wrap=True)
    table.add_column("outcome (✔ as scripted)")
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("checks", justify="right", no_wrap=True)
    table.add_column("retries", justify="right", no_wrap=True)
    for run in runs:
        outcome = Text("✔ ", style="green") if run.as_expected else Text("✘ ", style="bold red")
        if run.status is not None:
            outcome.append(state_text(run.status.state, run.status.raw_state))
        else:
            outcome.append("no status", style="red")
        if not run.as_expected:
            outcome.append(f", expected {run.expect.value}", style="bold red")
        table.add_row(
            run.platform,
            run.name,
            outcome,
            f"{run.elapsed:.1f}s",
            str(run.checks),
            str(run.retries),
        )
    return table


def _intro(
    emulators: list[tuple[Emulator, list[DemoRun]]], missing: str | None, runs: list[DemoRun]
) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lines: list[Any] = [
        Text("runbridge demo: scripted runs on local emulators (loopback only)", style="bold")
    ]
    for emu, _ in emulators:
        lines.append(Text(f"  {emu.platform} emulator on {emu.base_url}"))
    if missing:
        lines.append(Text(f"  langgraph emulator {missing}: skipped", style="dim"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(style="dim")
    for run in runs:
        grid.add_row(f"  {run.platform}", run.name, run.story)
    lines += [Text(""), grid, Text("")]
    return Group(*lines)


# -- the demo ------------------------------------------------------------------------------------
def run_demo(console: Console) -> int:
    """Run the demo, printing to ``console``: live on a terminal, plain lines otherwise.

    Returns 0 when every run ended as scripted and each emulator recorded one launch per run.
    """
    try:
        from .testing import Fault, serve
        from .testing.rest import REST_CONFIG
    except ImportError as exc:
        console.print(
            f"runbridge demo needs the 'testing' extra: pip install 'runbridge[testing]' ({exc})",
            markup=False,
        )
        return 2

    rest_runs, rest_scripts = _rest_runs()
    flaky = next(run for run in rest_runs if run.name == "flaky-report")
    token = secrets.token_urlsafe(16)
    rest_emu = _rest_emulator(rest_scripts, token)
    lg_emu, lg_missing = _langgraph_emulator()

    with contextlib.ExitStack() as stack:
        # the display reports what runbridge's log would say; keep Python's last-resort
        # handler from printing its warnings over it (configured logging still gets them)
        quiet = logging.NullHandler()
        logging.getLogger("runbridge").addHandler(quiet)
        stack.callback(logging.getLogger("runbridge").removeHandler, quiet)
        rest_emu = stack.enter_context(serve(rest_emu))
        emulators: list[tuple[Emulator, list[DemoRun]]] = [(rest_emu, rest_runs)]
        lg_runs: list[DemoRun] = []
        if lg_emu is not None:
            try:
                lg_emu = stack.enter_context(serve(lg_emu))
            except Exception as exc:  # the langgraph emulator is optional here
                lg_missing, lg_emu = f"cannot start: {exc}", None
        if lg_emu is not None:
            lg_runs = _langgraph_runs()
            emulators.append((lg_emu, lg_runs))

        # the flaky run: its launch creates the run but the answer is lost (the case that makes
        # naive clients launch twice); its first checks meet a 429 with Retry-After, then a 503
        rest_emu.inject(Fault(status=503, method="POST", path="/jobs/flaky-report/", when="after"))

        def flaky_checks(ref: RunRef) -> None:
            rest_emu.inject(
                Fault(status=429, retry_after="1", method="GET", path=f"/runs/{ref.id}")
            )
            rest_emu.inject(Fault(status=503, method="GET", path=f"/runs/{ref.id}"))

        flaky.after_launch = flaky_checks
        runs = rest_runs + lg_runs
        for run in runs:
            # an idempotency key makes a launch safe to retry: the platform de-duplicates on it
            run.key = f"demo-{run.name}-{uuid.uuid4().hex[:8]}"

        console.print(_intro(emulators, lg_missing, runs))

        live = console.is_terminal
        start = time.monotonic()

        closed = False

        def echo(run: DemoRun, text: str) -> None:
            nonlocal closed
            if closed:
                return
            try:
                console.print(
                    f"{time.monotonic() - start:6.1f}s  {run.platform:<9} {run.name:<13} {text}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            except SystemExit:
                # stdout was closed (`runbridge demo | head`): rich has pointed it at devnull
                # and asks to exit; let the runs end instead of failing them from a hook
                closed = True

        printer = None if live else echo

        async def main() -> None:
            def hook(event: Event) -> None:
                _on_event(event, printer)

            clients = [
                AsyncRunClient("rest", rest_emu.base_url, token, hooks=[hook], **REST_CONFIG)
            ]
            tasks = [asyncio.create_task(_follow(clients[0], run, printer)) for run in rest_runs]
            if lg_emu is not None:
                clients.append(AsyncRunClient("langgraph", lg_emu.base_url, hooks=[hook]))
                tasks += [asyncio.create_task(_follow(clients[1], run, printer)) for run in lg_runs]
            try:
                await asyncio.gather(*tasks)
            finally:
                for client in clients:
                    await client.aclose()

        if live:
            from rich.live import Live

            with Live(_Board(runs), console=console, refresh_per_second=10, transient=True):
                asyncio.run(main())
        else:
            asyncio.run(main())

        if not live:
            console.print()
        console.print(_summary(runs))
        for run in runs:
            if run.status is not None and run.status.message:
                console.print(f"  {run.name}: {run.status.message}", markup=False, style="dim")
            elif run.error:
                console.print(f"  {run.name}: {run.error}", markup=False, style="red")
        console.print()

        ok = all(run.as_expected for run in runs)
        for emu, emu_runs in emulators:
            launched_runs = sum(1 for run in emu_runs if run.ref is not None)
            recorded = len(emu.launches)
            same = recorded == launched_runs == len(emu_runs)
            ok = ok and same
            line = (
                f"{emu.platform} emulator recorded {recorded} launch{'es' if recorded != 1 else ''} "
                f"for {len(emu_runs)} runs: "
            )
            line += "no duplicates" if same else f"expected {len(emu_runs)}"
            if same and emu is rest_emu:
                line += " (flaky-report's lost launch answer was retried with its idempotency key)"
            console.print(line, markup=False, style="green" if same else "bold red")
        console.print(
            (
                "[green]✔ every run ended as scripted[/]"
                if ok
                else "[bold red]✘ some runs did not end as scripted[/]"
            )
            + f" in {time.monotonic() - start:.1f}s"
        )
    return 0 if ok else 1
