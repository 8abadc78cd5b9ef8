"""A fault soak: many keyed runs launched and awaited at once against an emulator that injects
random faults, then checked against what the emulator recorded (issue 12).

For each platform, :func:`plan` makes a seeded plan of runs: a key, a script (random step
lengths, a random terminal state among the platform's), some with a ``run_timeout`` that makes
runbridge cancel them, and a start offset. The emulator gives each launch its run's script
(``Emulator.script_for``: launches arrive in no fixed order) and meets a fraction of *all*
requests with a random fault (:class:`~runbridge.testing.RandomFaults`: 5xx and 429 before the
platform acts, 5xx, drops, malformed, truncated and garbled answers after it did, drops and
proxy garbage before, slow answers, some slower than the client's request timeout). Each run is
``client.launch(params, key=key)`` then ``client.wait(ref, ...)``, all concurrently (async
client) or on a thread pool (sync client). :func:`check` then asserts:

(a) every run ends in its scripted terminal state (TIMED_OUT and ``cancelled_by_runbridge`` for
    the run_timeout ones), or raises :class:`LaunchUncertain`, which is right only where the
    platform cannot look a launch up by key (``rest``, ``lume``) *and* a fault that makes a
    launch ambiguous hit that key's launch request; the emulator then holds at most one run for
    the key (counted in the summary);
(b) no duplicate launches: the emulator holds at most one launch per key (and, for Vi, no PUT
    replaced a run that existed);
(c) no orphans: every launch the emulator holds is the one runbridge returned a ref for, or is
    named by the key of a LaunchUncertain;
(d) nothing but :class:`RunbridgeError` escapes (every run is wrapped in ``except
    BaseException``).

A summary (seed, runs, faults met by kind, outcomes) is printed. The seed fixes the plan and the
fault draws (each a function of the seed and the request, see RandomFaults; requests that name
random ids, and the timing of concurrent runs, still vary from run to run).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from runbridge.core import (
    AsyncRunClient,
    Event,
    LaunchUncertain,
    PollSchedule,
    RetryPolicy,
    RunbridgeError,
    RunClient,
    RunRef,
    RunState,
    RunStatus,
    TransportError,
)
from runbridge.core.providers.flyte import run_name_for_key
from runbridge.core.providers.langgraph import METADATA_KEY as LANGGRAPH_KEY
from runbridge.core.providers.langgraph import thread_for_key
from runbridge.core.providers.lume import KEY_FIELD as LUME_KEY
from runbridge.core.providers.vi import METADATA_KEY as VI_KEY
from runbridge.core.providers.vi import run_for_key
from runbridge.core.providers.wandb import run_id_for_key
from runbridge.testing import Emulator, Fault, RecordedRequest, Relay, Script, create_emulator
from runbridge.testing._emulator import InjectedFault, RandomFaults
from runbridge.testing.lume import LumeEmulator
from runbridge.testing.rest import REST_CONFIG
from runbridge.testing.vi import DEFAULT_FLOW, ViEmulator
from runbridge.testing.wandb import DEFAULT_ENTITY

__all__ = [
    "SOAKS",
    "PlatformSoak",
    "Report",
    "check",
    "plan",
    "soak_async",
    "soak_sync",
]

# -- the clients' settings ---------------------------------------------------------------------
REQUEST_TIMEOUT = 1.0
"""Short, so that some slow answers outlast it (a timeout after the request was sent)."""
RETRY = RetryPolicy(attempts=8, total=30.0, first=0.02, cap=0.2, jitter=0.5)
"""Generous: at a fault rate r, a request fails for good only after 8 faults in a row (r**8)."""
POLL = PollSchedule(first=0.05, factor=1.5, cap=0.3, jitter=0.2)
WAIT_TIMEOUT = 40.0
RUN_TIMEOUT = 0.6
"""Seconds after which runbridge cancels a run scripted to run far longer..."""
LONG_RUN = 8.0
"""... this long (bounded: a run whose cancel never lands ends on its own, see
CANCEL_NOT_RETRIED)."""
FAULT_RATE = 0.15
LAUNCH_RATE = 0.4
"""The fault rate of launch requests (where duplicates and orphans are made): higher."""
START_SPREAD = 3.0
"""Launches start at random over this many seconds per 50 runs (a longer soak, not a denser one:
past a few hundred runs at once, the machine's own slowness outlasts the request timeout)."""

KEY_PATTERN = re.compile(
    r"soak\.\d+\.[a-z]+\.[a-z]+\.\d{5}"  # a key itself
    r"|rb-[0-9a-f]{20}"  # a W&B run id (run_id_for_key)
    r"|rb[0-9a-f]{18}"  # a Flyte run name (run_name_for_key)
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # uuid5(key) ids
)
"""What may name a soak key in a request: the key, or an id derived from it."""

AMBIGUOUS = frozenset({"status", "drop", "malformed", "truncate", "garble"})
"""Fault kinds that leave a launch's fate unknown to the client (429 is 'not processed'; a
delay only when it outlasts the request timeout)."""


def fault_menu(request_timeout: float = REQUEST_TIMEOUT) -> list[tuple[float, Any]]:
    """The faults a soak draws from, with their weights."""
    statuses = [500, 502, 503, 504]
    return [
        (3.0, lambda r: Fault("status", status=r.choice(statuses))),
        (2.0, lambda r: Fault("status", status=r.choice(statuses), when="after")),
        (2.0, lambda r: Fault("status", status=429, retry_after=r.choice([None, "0", "0.05"]))),
        (1.5, Fault("drop")),
        (1.5, Fault("drop", when="after")),
        (0.5, Fault("malformed")),
        (0.5, Fault("malformed", when="after")),
        (1.0, lambda r: Fault("truncate", when="after", cut=r.random(), ok_only=True)),
        (1.0, lambda r: Fault("garble", when="after", cut=r.random(), ok_only=True)),
        (
            1.5,
            lambda r: Fault(
                "delay", seconds=r.uniform(0.02, 0.3), when=r.choice(["before", "after"])
            ),
        ),
        (
            0.5,
            lambda r: Fault(
                "delay",
                seconds=request_timeout + r.uniform(0.1, 0.4),
                when=r.choice(["before", "after"]),
            ),
        ),
    ]


def fault_label(fault: Fault, request_timeout: float = REQUEST_TIMEOUT) -> str:
    """A fault's kind for the summary: ``5xx before``, ``429``, ``slow past timeout after``..."""
    if fault.kind == "status":
        what = "429" if fault.status == 429 else "5xx"
    elif fault.kind == "delay":
        what = "slow past timeout" if fault.seconds >= request_timeout else "slow"
    else:
        what = fault.kind
    return f"{what} {fault.when}"


def ambiguous(fault: Fault, request_timeout: float = REQUEST_TIMEOUT) -> bool:
    """Whether this fault on a launch request leaves the launch's fate unknown to the client."""
    if fault.kind == "status":
        return fault.status != 429
    if fault.kind == "delay":
        return fault.seconds >= request_timeout
    return fault.kind in AMBIGUOUS


# -- platforms -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Ending:
    """A scripted terminal state (``final``, raw) and the RunState runbridge must report."""

    final: str
    state: RunState
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Launched:
    """A launch the emulator holds: the key it carries (None: none) and the ids that name it."""

    key: str | None
    ids: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Skip:
    """A fault kind left out for some requests of a platform because of a known bug (an
    xfail-style note naming it): drawn, then not applied, and counted in the summary."""

    bug: str
    covers: Callable[[Fault, RecordedRequest], bool]
    """Whether this fault, on this request, is one the bug makes the soak skip."""


# -- known bugs the soak found (see the report of issue 12) --------------------------------------
LATE_LAUNCH = (
    "core/flows.py FlowContext.launch (with providers/{platform}.py): a launch request slower "
    "than request_timeout still lands after the client gave up; the flow finds by key at once "
    "(nothing yet), launches again, and the late request then lands too: {what}"
)
WANDB_FIRST_100 = (
    "providers/wandb.py WandB.find: lists only runQueueItems(first: 100) of the queue (no paging); "
    "on a queue holding more items, a push whose answer was lost is not found and is pushed again"
)
CANCEL_NOT_RETRIED = (
    "core/flows.py: a run_timeout cancel that fails with a retryable error is never sent again "
    "(_cancel_for_run_timeout yields Cancel once; FlowContext.cancel uses run(), not "
    "run_retrying(), and send() cannot retry a garbled 2xx): the wait then waits out "
    "cancel_grace for a run nobody cancelled and reports its own end, not TIMED_OUT"
)


@dataclasses.dataclass
class PlatformSoak:
    """How to soak one platform: its emulator, client options, launch params, scripts, and how
    to read keys and launches back from the emulator."""

    name: str
    token: str
    make: Callable[[int], Emulator]
    """A fresh emulator for a soak of this many runs."""
    options: Callable[[Emulator], dict[str, Any]]
    params: Callable[[str, int], dict[str, Any]]
    steps: Sequence[str]
    """Raw states a run passes through (each for a random 0.05-0.3 s)."""
    endings: Sequence[Ending]
    cancelled: str | None
    """The raw state a run cancelled by runbridge ends in; None: runs cannot be cancelled."""
    finds_by_key: bool
    """Whether runbridge can look a launch up by its key on this platform."""
    tokens: Callable[[str], Iterable[str]]
    """Strings (the key, ids derived from it) that name the key's run in a request."""
    is_launch: Callable[[RecordedRequest], bool]
    """Whether a request is the one that creates a run."""
    launched: Callable[[Emulator, Mapping[str, str]], list[Launched]]
    """The launches the emulator holds (given token -> key)."""
    extra: Callable[[Emulator, Mapping[str, str]], list[tuple[str | None, str]]] = (
        lambda emu, keys: []
    )
    """Further duplicate-launch problems, as (key, what) (Vi: a PUT that replaced a run)."""
    skips: Sequence[Skip] = ()
    """Faults not applied on this platform because of a known bug."""
    runs: int = 50
    """Runs in the async soak (before RUNBRIDGE_SOAK_RUNS scales it)."""
    sync_runs: int = 6


def _late(fault: Fault) -> bool:
    """A request that lands after its client gave up on it."""
    return fault.kind == "delay" and fault.when == "before" and fault.seconds >= REQUEST_TIMEOUT


def _body(request: RecordedRequest) -> Mapping[str, Any]:
    return request.body if isinstance(request.body, Mapping) else {}


def _tag(runs: Iterable[Any], key_of: Callable[[Any], Any]) -> list[Launched]:
    out = []
    for run in runs:
        key = key_of(run)
        out.append(Launched(key if isinstance(key, str) else None, frozenset({run.id})))
    return out


class SoakVi(ViEmulator):
    """The Vi emulator, also recording every PUT that landed on a run that existed (the launch
    replaced it: a second launch under the same id)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replaced: list[str] = []

    async def put_run(self, request: Request) -> Response:
        response = await super().put_run(request)
        if response.status_code == 200:
            with self.lock:
                self.replaced.append(request.path_params["run_id"])
        return response


def _wandb_launched(emu: Emulator, keys: Mapping[str, str]) -> list[Launched]:
    items: dict[str, set[str]] = collections.defaultdict(set)
    for queue in getattr(emu, "queues", {}).values():
        for item in queue.items.values():
            items[str(item.spec.get("run_id"))].add(item.id)
    items_by_run = {run_id: frozenset(ids) for run_id, ids in items.items()}
    out = []
    for spec in emu.launches:
        run_id = str(spec.get("run_id"))
        ids = frozenset({run_id}) | items_by_run.get(run_id, frozenset())
        out.append(Launched(keys.get(run_id), ids))
    return out


def _flyte_launched(emu: Emulator, keys: Mapping[str, str]) -> list[Launched]:
    return [Launched(keys.get(run.id), frozenset({run.id})) for run in emu.runs.values()]


ORG = "org-soak"
WANDB_PROJECT = "soak"
WANDB_QUEUE_RUNS = 90
"""Runs per W&B queue: find lists only a queue's first 100 items (WANDB_FIRST_100)."""


def _wandb_queue(i: int) -> str:
    return f"soak-{i // WANDB_QUEUE_RUNS}"


SOAKS: dict[str, PlatformSoak] = {
    soak.name: soak
    for soak in [
        PlatformSoak(
            name="rest",
            token="rest-soak-token",
            make=lambda runs: create_emulator("rest", token="rest-soak-token"),
            options=lambda emu: dict(REST_CONFIG),
            params=lambda key, i: {"job": "etl", "soak_key": key, "n": i},
            steps=["queued", "running"],
            endings=[
                Ending("succeeded", RunState.SUCCEEDED, 4),
                Ending("failed", RunState.FAILED, 2),
                Ending("timed_out", RunState.TIMED_OUT, 1),
                Ending("cancelled", RunState.CANCELLED, 1),
            ],
            cancelled="cancelled",
            finds_by_key=False,
            tokens=lambda key: [key],
            is_launch=lambda r: r.method == "POST" and r.path.startswith("/api/v1/jobs/"),
            launched=lambda emu, keys: _tag(
                emu.runs.values(), lambda run: (run.data.get("params") or {}).get("soak_key")
            ),
        ),
        PlatformSoak(
            name="lume",
            token="lume-soak-key",
            make=lambda runs: LumeEmulator(token="lume-soak-key"),
            options=lambda emu: {},
            params=lambda key, i: {
                "flow_version": "invoice_processor:v3",
                "source_path": f"s3://soak/{key}.csv",
            },
            steps=["CREATED", "SYNCING_SOURCE", "TRANSFORMING", "SYNCING_TARGET"],
            endings=[
                Ending("SUCCEEDED", RunState.SUCCEEDED, 4),
                Ending("FAILED", RunState.FAILED, 2),
                Ending("CRASHED", RunState.FAILED, 1),
                Ending("PARTIAL_FAILED", RunState.PARTIAL, 1),
            ],
            cancelled=None,
            finds_by_key=False,
            tokens=lambda key: [key],
            is_launch=lambda r: r.method == "POST" and r.path == "/runs",
            launched=lambda emu, keys: _tag(
                emu.runs.values(), lambda run: (run.data.get("run_metadata") or {}).get(LUME_KEY)
            ),
        ),
        PlatformSoak(
            name="langgraph",
            token="lg-soak-key",
            make=lambda runs: create_emulator("langgraph", token="lg-soak-key", heartbeat=0.1),
            options=lambda emu: {},
            params=lambda key, i: {"assistant_id": "agent", "input": {"question": i}},
            steps=["pending", "running"],
            endings=[
                Ending("success", RunState.SUCCEEDED, 4),
                Ending("error", RunState.FAILED, 2),
                Ending("timeout", RunState.TIMED_OUT, 1),
            ],
            cancelled="interrupted",
            finds_by_key=True,
            tokens=lambda key: [key, thread_for_key(key)],
            is_launch=lambda r: (
                r.method == "POST" and r.path.startswith("/threads/") and r.path.endswith("/runs")
            ),
            launched=lambda emu, keys: _tag(
                emu.runs.values(), lambda run: run.metadata.get(LANGGRAPH_KEY)
            ),
            skips=[
                Skip(
                    LATE_LAUNCH.format(
                        platform="langgraph",
                        what="a second run on the key's thread when the relaunched run has "
                        "already ended (multitask_strategy='reject' only refuses while a run "
                        "is in flight)",
                    ),
                    lambda f, r: _late(f) and r.method == "POST" and r.path.endswith("/runs"),
                ),
            ],
        ),
        PlatformSoak(
            name="flyte",
            token="flyte-soak-token",
            make=lambda runs: create_emulator("flyte", token="flyte-soak-token"),
            options=lambda emu: {
                "project": "soak",
                "domain": "development",
                "console_url": emu.base_url,
            },
            params=lambda key, i: {"task": "wf.main", "version": "v1", "inputs": {"n": i}},
            steps=["ACTION_PHASE_QUEUED", "ACTION_PHASE_INITIALIZING", "ACTION_PHASE_RUNNING"],
            endings=[
                Ending("ACTION_PHASE_SUCCEEDED", RunState.SUCCEEDED, 4),
                Ending("ACTION_PHASE_FAILED", RunState.FAILED, 2),
                Ending("ACTION_PHASE_TIMED_OUT", RunState.TIMED_OUT, 1),
                Ending("ACTION_PHASE_ABORTED", RunState.CANCELLED, 1),
            ],
            cancelled="ACTION_PHASE_ABORTED",
            finds_by_key=True,
            tokens=lambda key: [run_name_for_key(key)],
            is_launch=lambda r: r.path.endswith("/CreateRun"),
            launched=_flyte_launched,
            skips=[],
        ),
        PlatformSoak(
            name="wandb",
            token="wandb-soak-key-0123456789abcdef0123456789abcdef",
            make=lambda runs: create_emulator(
                "wandb",
                token="wandb-soak-key-0123456789abcdef0123456789abcdef",
                pickup=0.1,
                queues=[_wandb_queue(i) for i in range(0, runs, WANDB_QUEUE_RUNS)],
            ),
            options=lambda emu: {"app_url": "https://wandb.example"},
            params=lambda key, i: {
                "queue": _wandb_queue(i),
                "entity": DEFAULT_ENTITY,
                "project": WANDB_PROJECT,
                "docker_image": "soak:1",
            },
            steps=["running"],
            endings=[
                Ending("finished", RunState.SUCCEEDED, 4),
                Ending("failed", RunState.FAILED, 2),
                Ending("crashed", RunState.FAILED, 1),
                Ending("killed", RunState.CANCELLED, 1),
            ],
            cancelled="killed",
            finds_by_key=True,
            tokens=lambda key: [run_id_for_key(key)],
            is_launch=lambda r: (
                r.path == "/graphql" and "pushToRunQueue" in str(_body(r).get("query", ""))
            ),
            launched=_wandb_launched,
            skips=[
                Skip(
                    LATE_LAUNCH.format(
                        platform="wandb", what="a second queue item for the same run id"
                    ),
                    lambda f, r: _late(f) and "pushToRunQueue" in str(_body(r).get("query", "")),
                )
            ],
        ),
        PlatformSoak(
            name="vi",
            token="dtvi_" + "s" * 98,
            make=lambda runs: SoakVi(token="dtvi_" + "s" * 98, organization_id=ORG),
            options=lambda emu: {"organization_id": ORG},
            params=lambda key, i: {"flow": DEFAULT_FLOW, "training_project": f"tp-{i}"},
            steps=["Pending", "Running"],
            endings=[
                Ending("Succeeded", RunState.SUCCEEDED, 4),
                Ending("Failed", RunState.FAILED, 2),
                Ending("Error", RunState.FAILED, 1),
                Ending("Cancelled", RunState.CANCELLED, 1),
            ],
            cancelled="Cancelled",
            finds_by_key=True,
            tokens=lambda key: [key, run_for_key(key)],
            is_launch=lambda r: r.method == "PUT" and "/runs/" in r.path,
            launched=lambda emu, keys: _tag(
                emu.runs.values(), lambda run: (run.data.get("attributes") or {}).get(VI_KEY)
            ),
            skips=[
                Skip(
                    LATE_LAUNCH.format(
                        platform="vi", what="its PUT replaces the run the relaunch created"
                    ),
                    lambda f, r: _late(f) and r.method == "PUT",
                ),
            ],
            extra=lambda emu, keys: [
                (keys.get(run_id), f"a PUT replaced run {run_id}, which existed (a second launch)")
                for run_id in getattr(emu, "replaced", [])
            ],
        ),
    ]
}


# -- the plan ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Planned:
    key: str
    index: int
    script: Script
    state: RunState
    raw: str
    run_timeout: float | None
    start_after: float


def plan(
    soak: PlatformSoak,
    runs: int,
    seed: int,
    client: str = "async",
    start_spread: float = START_SPREAD,
) -> list[Planned]:
    """A seeded plan of ``runs`` runs: a key, a script and an expected end for each."""
    rng = random.Random(f"{seed}:{soak.name}:{client}")
    weights = [e.weight for e in soak.endings]
    out = []
    for i in range(runs):
        key = f"soak.{seed}.{soak.name}.{client}.{i:05d}"
        steps = [(raw, round(rng.uniform(0.05, 0.3), 3)) for raw in soak.steps]
        if soak.cancelled is not None and rng.random() < 0.12:
            script = Script([*steps[:-1], (soak.steps[-1], LONG_RUN)], final=soak.endings[0].final)
            planned = Planned(key, i, script, RunState.TIMED_OUT, soak.cancelled, RUN_TIMEOUT, 0.0)
        else:
            (ending,) = rng.choices(list(soak.endings), weights=weights)
            script = Script(
                steps,
                final=ending.final,
                message=f"scripted {ending.final}"
                if ending.state is not RunState.SUCCEEDED
                else None,
            )
            planned = Planned(key, i, script, ending.state, ending.final, None, 0.0)
        spread = start_spread * max(1.0, runs / 50)
        out.append(dataclasses.replace(planned, start_after=round(rng.uniform(0, spread), 3)))
    return out


# -- faults --------------------------------------------------------------------------------------
class SoakFaults(RandomFaults):
    """RandomFaults less the fault kinds a platform skips (known bugs), counted."""

    def __init__(self, soak: PlatformSoak, *, rate: float, **kwargs: Any) -> None:
        launch_rate = max(rate, LAUNCH_RATE) if rate > 0 else 0.0
        super().__init__(
            fault_menu(),
            rate=lambda r: launch_rate if soak.is_launch(r) else rate,
            **kwargs,
        )
        self.soak = soak
        self.skipped: collections.Counter[str] = collections.Counter()

    def draw(self, request: RecordedRequest) -> Fault | None:
        fault = super().draw(request)
        if fault is None:
            return None
        for skip in self.soak.skips:
            if skip.covers(fault, request):
                self.skipped[f"{fault_label(fault)}: {skip.bug}"] += 1
                return None
        return fault


class Keys:
    """Reads which soak key a request is about, from the key or an id derived from it."""

    def __init__(self, soak: PlatformSoak, keys: Iterable[str]) -> None:
        self.by_token: dict[str, str] = {}
        for key in keys:
            for token in soak.tokens(key):
                self.by_token[token] = key

    def of(self, request: RecordedRequest) -> str | None:
        try:
            body = json.dumps(request.body, default=str)
        except (TypeError, ValueError):
            body = repr(request.body)
        haystack = " ".join(
            [request.path, request.query, body, request.headers.get("idempotency-key", "")]
        )
        for match in KEY_PATTERN.finditer(haystack):
            key = self.by_token.get(match.group(0))
            if key is not None:
                return key
        return None


# -- running ---------------------------------------------------------------------------------------
NOTED = frozenset({"launched", "reattached", "run_timeout", "cancel_failed"})


@dataclasses.dataclass
class Outcome:
    planned: Planned
    ref: RunRef | None = None
    status: RunStatus | None = None
    error: RunbridgeError | None = None
    foreign: BaseException | None = None
    seconds: float = 0.0
    events: list[Event] = dataclasses.field(default_factory=list)
    """The events of its launch and wait worth a diagnosis (launched, reattached, retry of a
    launch, run_timeout, cancel_failed)."""

    def note(self, event: Event) -> None:
        if event.kind in NOTED:
            self.events.append(event)

    @property
    def kind(self) -> str:
        if self.foreign is not None:
            return f"foreign {type(self.foreign).__name__}"
        if self.error is not None:
            return type(self.error).__name__
        if self.status is not None:
            suffix = " (cancelled by runbridge)" if self.status.cancelled_by_runbridge else ""
            return f"{self.status.state.value}{suffix}"
        return "nothing"


def client_options(soak: PlatformSoak, emu: Emulator) -> dict[str, Any]:
    return {
        "poll": POLL,
        "retry": RETRY,
        "request_timeout": REQUEST_TIMEOUT,
        **soak.options(emu),
    }


def prepare(
    relay: Relay, soak: PlatformSoak, runs: int, seed: int, rate: float, client: str
) -> tuple[Emulator, list[Planned], Keys]:
    planned = plan(soak, runs, seed, client)
    emu = relay.swap(soak.make(len(planned)))
    keys = Keys(soak, [p.key for p in planned])
    scripts = {p.key: p.script for p in planned}

    def script_for(request: RecordedRequest) -> Script | None:
        key = keys.of(request)
        return scripts.get(key) if key is not None else None

    emu.script_for = script_for
    emu.chaos = SoakFaults(soak, rate=rate, seed=seed)
    return emu, planned, keys


async def _run_async(client: AsyncRunClient, soak: PlatformSoak, planned: Planned) -> Outcome:
    await asyncio.sleep(planned.start_after)
    outcome = Outcome(planned)
    started = time.monotonic()
    try:
        outcome.ref = await client.launch(
            soak.params(planned.key, planned.index), key=planned.key, on_event=outcome.note
        )
        outcome.status = await client.wait(
            outcome.ref,
            wait_timeout=WAIT_TIMEOUT,
            run_timeout=planned.run_timeout,
            on_event=outcome.note,
        )
    except RunbridgeError as exc:
        outcome.error = exc
    except BaseException as exc:  # (d): anything else escaping runbridge is a failure
        outcome.foreign = exc
    outcome.seconds = time.monotonic() - started
    return outcome


def _run_sync(client: RunClient, soak: PlatformSoak, planned: Planned) -> Outcome:
    time.sleep(planned.start_after)
    outcome = Outcome(planned)
    started = time.monotonic()
    try:
        outcome.ref = client.launch(
            soak.params(planned.key, planned.index), key=planned.key, on_event=outcome.note
        )
        outcome.status = client.wait(
            outcome.ref,
            wait_timeout=WAIT_TIMEOUT,
            run_timeout=planned.run_timeout,
            on_event=outcome.note,
        )
    except RunbridgeError as exc:
        outcome.error = exc
    except BaseException as exc:  # (d)
        outcome.foreign = exc
    outcome.seconds = time.monotonic() - started
    return outcome


def _settle(emu: Emulator) -> None:
    """Let requests the emulator is still acting on (a slow answer the client gave up on) land
    before its records are read."""
    emu.wait_idle(timeout=5.0)
    if isinstance(emu, LumeEmulator):
        emu.close()


async def soak_async(
    relay: Relay, name: str, *, runs: int, seed: int, rate: float = FAULT_RATE
) -> Report:
    soak = SOAKS[name]
    emu, planned, keys = prepare(relay, soak, runs, seed, rate, "async")
    started = time.monotonic()
    async with AsyncRunClient(
        soak.name, emu.base_url, soak.token, **client_options(soak, emu)
    ) as client:
        outcomes = await asyncio.gather(*(_run_async(client, soak, p) for p in planned))
    elapsed = time.monotonic() - started
    await asyncio.to_thread(_settle, emu)
    return check(soak, emu, list(outcomes), keys, seed=seed, elapsed=elapsed, client="async")


def soak_sync(
    relay: Relay, name: str, *, runs: int, seed: int, rate: float = FAULT_RATE, threads: int = 8
) -> Report:
    soak = SOAKS[name]
    emu, planned, keys = prepare(relay, soak, runs, seed, rate, "sync")
    started = time.monotonic()
    with (
        RunClient(soak.name, emu.base_url, soak.token, **client_options(soak, emu)) as client,
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="soak") as pool,
    ):
        outcomes = list(pool.map(lambda p: _run_sync(client, soak, p), planned))
    elapsed = time.monotonic() - started
    _settle(emu)
    return check(soak, emu, outcomes, keys, seed=seed, elapsed=elapsed, client="sync")


# -- checking ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
    platform: str
    client: str
    seed: int
    outcomes: list[Outcome]
    problems: list[str]
    faults: collections.Counter[str]
    launch_faults: collections.Counter[str]
    skipped: collections.Counter[str]
    known: collections.Counter[str]
    requests: int
    uncertain: int
    uncertain_created: int
    uncertain_slow: int
    elapsed: float

    def summary(self) -> str:
        kinds = collections.Counter(o.kind for o in self.outcomes)
        causes = collections.Counter(
            type(o.error.cause).__name__
            for o in self.outcomes
            if isinstance(o.error, LaunchUncertain)
        )
        lines = [
            f"fault soak: {self.platform} ({self.client} client), seed {self.seed} "
            f"(RUNBRIDGE_SOAK_SEED), {len(self.outcomes)} runs, {self.requests} requests, "
            f"{sum(self.faults.values())} faults met, {self.elapsed:.1f}s",
            "  faults: " + _counts(self.faults),
            "  faults on launch requests: " + _counts(self.launch_faults),
            "  outcomes: " + _counts(kinds),
            f"  LaunchUncertain: {self.uncertain} (the platform had created the run for "
            f"{self.uncertain_created} of them; {self.uncertain_slow} after a timeout that no "
            "injected fault caused: a busy machine); causes: " + _counts(causes),
        ]
        if self.skipped:
            lines.append("  faults drawn but not applied (known bugs): " + _counts(self.skipped))
        if self.known:
            lines.append("  runs that met a known bug (xfail): " + _counts(self.known))
        lines.append(f"  problems: {len(self.problems)}")
        lines.extend(f"    - {p}" for p in self.problems[:40])
        if len(self.problems) > 40:
            lines.append(f"    ... and {len(self.problems) - 40} more")
        return "\n".join(lines)


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "none"


def _events(outcome: Outcome) -> str:
    return (
        "; ".join(f"{e.kind}" + (f" ({e.error})" if e.error else "") for e in outcome.events)
        or "none"
    )


def _names(ref: RunRef, launched: Launched) -> bool:
    return ref.id in launched.ids or ref.scope.get("run_id") in launched.ids


def check(
    soak: PlatformSoak,
    emu: Emulator,
    outcomes: list[Outcome],
    keys: Keys,
    *,
    seed: int,
    elapsed: float,
    client: str,
) -> Report:
    problems: list[str] = []
    with emu.lock:
        injected: list[InjectedFault] = list(emu.injected)
        requests = len(emu.requests)
        launched = soak.launched(emu, keys.by_token)
        extra = soak.extra(emu, keys.by_token)

    # which faults met each key's launch requests
    on_launch: dict[str, list[Fault]] = collections.defaultdict(list)
    on_key: dict[str, list[str]] = collections.defaultdict(list)
    faults: collections.Counter[str] = collections.Counter()
    launch_faults: collections.Counter[str] = collections.Counter()
    for met in injected:
        label = fault_label(met.fault)
        faults[label] += 1
        owner = keys.of(met.request)
        if owner is not None:
            on_key[owner].append(f"{label} on {met.request.method} {met.request.path[-40:]}")
        if soak.is_launch(met.request):
            launch_faults[label] += 1
            key = keys.of(met.request)
            if key is not None:
                on_launch[key].append(met.fault)

    by_key: dict[str, list[Launched]] = collections.defaultdict(list)
    for item in launched:
        if item.key is None:
            problems.append(
                f"(b/c) the emulator holds a launch with no soak key: {sorted(item.ids)}"
            )
        else:
            by_key[item.key].append(item)

    planned_keys = {o.planned.key for o in outcomes}
    for key in sorted(set(by_key) - planned_keys):
        problems.append(f"(c) the emulator holds a launch for unknown key {key!r}")

    uncertain = uncertain_created = slow = 0
    known: collections.Counter[str] = collections.Counter()
    for outcome in outcomes:
        p = outcome.planned
        mine = by_key.get(p.key, [])
        where = f"{p.key} (expected {p.state.value} {p.raw!r}"
        where += f", run_timeout={p.run_timeout:g}s)" if p.run_timeout else ")"
        met = ", ".join(fault_label(f) for f in on_launch.get(p.key, [])) or "none"
        met_all = "; ".join(on_key.get(p.key, [])) or "none"
        # (d) nothing but runbridge's errors
        if outcome.foreign is not None:
            problems.append(
                f"(d) {where}: {type(outcome.foreign).__module__}."
                f"{type(outcome.foreign).__name__} escaped: {outcome.foreign!r}"
            )
            continue
        # (b) zero duplicate launches
        if len(mine) > 1:
            problems.append(
                f"(b) {where}: {len(mine)} launches for one key: "
                f"{[sorted(m.ids) for m in mine]}; faults on its launch requests: {met}"
            )
        error = outcome.error
        if isinstance(error, LaunchUncertain):
            uncertain += 1
            uncertain_created += len(mine) == 1
            if soak.finds_by_key:
                problems.append(
                    f"(a) {where}: LaunchUncertain on a platform that looks launches up by "
                    f"key: {error}"
                )
            elif not any(ambiguous(f) for f in on_launch.get(p.key, [])):
                cause = error.cause
                if isinstance(cause, TransportError) and cause.timeout:
                    slow += 1  # a slow answer the soak did not inject: the machine was busy
                else:
                    problems.append(
                        f"(a) {where}: LaunchUncertain, but no fault made its launch ambiguous "
                        f"(faults on its launch requests: {met}): {error}"
                    )
            if error.key != p.key:
                problems.append(f"(c) {where}: LaunchUncertain names key {error.key!r}")
            continue
        if error is not None:
            problems.append(
                f"(a) {where}: {type(error).__name__}: {error}"
                f" [ref {outcome.ref}; launches held: {[sorted(m.ids) for m in mine]}; "
                f"faults met: {met_all}; events: {_events(outcome)}]"
            )
            continue
        # (a) the expected terminal state
        status = outcome.status
        assert status is not None and outcome.ref is not None
        cancel_failed = any(e.kind == "cancel_failed" for e in outcome.events)
        if (
            p.run_timeout is not None
            and not status.cancelled_by_runbridge
            and status.raw_state == p.script.final
            and cancel_failed
        ):
            known[CANCEL_NOT_RETRIED] += 1  # (a) known bug: its own end, not TIMED_OUT
        elif (status.state, status.raw_state) != (p.state, p.raw) or (
            p.run_timeout is not None and not status.cancelled_by_runbridge
        ):
            problems.append(
                f"(a) {where}: ended {status.state.value} {status.raw_state!r} "
                f"({status.message}), cancelled_by_runbridge={status.cancelled_by_runbridge}; "
                f"ref {outcome.ref}; faults met: {met_all}; events: {_events(outcome)}"
            )
        if p.run_timeout is None and status.cancelled_by_runbridge:
            problems.append(f"(a) {where}: cancelled by runbridge without a run_timeout")
        # (c) the ref names the launch the platform holds
        if not mine:
            problems.append(f"(c) {where}: ref {outcome.ref} but the emulator holds no launch")
        elif not any(_names(outcome.ref, m) for m in mine):
            problems.append(
                f"(c) {where}: ref {outcome.ref} names none of the launches held "
                f"{[sorted(m.ids) for m in mine]}"
            )

    # (c) every launch held is one runbridge returned or reported
    accounted = {
        o.planned.key
        for o in outcomes
        if isinstance(o.error, LaunchUncertain) or (o.ref is not None and o.error is None)
    }
    for key, mine in sorted(by_key.items()):
        if key in planned_keys and key not in accounted:
            outcome = next(o for o in outcomes if o.planned.key == key)
            problems.append(
                f"(c) orphan: {key} has a launch on the platform {[sorted(m.ids) for m in mine]}"
                f" but runbridge reported {outcome.kind}: {outcome.error or outcome.foreign}"
            )
    for key, what in extra:
        faults_met = "; ".join(on_key.get(key, [])) if key else "?"
        problems.append(f"(b) {key}: {what}; faults met: {faults_met or 'none'}")
    skipped = emu.chaos.skipped if isinstance(emu.chaos, SoakFaults) else collections.Counter()
    return Report(
        soak.name,
        client,
        seed,
        outcomes,
        problems,
        faults,
        launch_faults,
        skipped,
        known,
        requests,
        uncertain,
        uncertain_created,
        slow,
        elapsed,
    )
