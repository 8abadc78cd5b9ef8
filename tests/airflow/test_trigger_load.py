"""Many ``RunTrigger``s in one event loop, as a triggerer holds them (issue 14 item 6, issue 15).

What blocked the triggerer's loop while it loaded 200 triggers was work done on the loop
itself: the connection read (Airflow's secrets code and runbridge's parsing, under one lock
that every trigger start waited on) and hundreds of triggers resuming in the same loop turn
when that read came back. These tests check the structure that removes it (the read runs in
a worker thread, once per connection; a read never waits for another connection's; the
waiters resume one per turn) and, as a sanity bound only, the loop's longest stall.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbridge.airflow_provider import triggers
from runbridge.airflow_provider.triggers import RunTrigger, connection_config
from runbridge.core.config import ClientConfig
from runbridge.core.models import RunRef
from runbridge.testing import Emulator, Script
from runbridge.testing.rest import REST_CONFIG

from .conftest import TOKEN

FAST = {"first": 0.2, "factor": 1.0, "cap": 0.2, "jitter": 0.0}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Each connection read, as (connection id, thread id); ``slow`` ones take 2 s."""
    seen: list[tuple[str, int]] = []
    real = triggers.read_connection_config

    def spy(conn_id: str) -> ClientConfig:
        seen.append((conn_id, threading.get_ident()))
        if "slow" in conn_id:
            time.sleep(2.0)  # a secrets backend taking its time
        return real(conn_id)

    monkeypatch.setattr(triggers, "read_connection_config", spy)
    yield seen


def connection_like(monkeypatch: pytest.MonkeyPatch, conn_id: str, **extra: Any) -> str:
    """Another connection to the REST emulator, with ``extra`` changed."""
    connection = json.loads(os.environ["AIRFLOW_CONN_RB_REST"])
    connection["extra"].update(extra)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return conn_id


@pytest.fixture
def far_platform(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A REST emulator in its own process (``runbridge emulate``), behind connection
    ``rb_far``: the platform's work must not share this process's interpreter with the loop
    under test, as it never does in a triggerer. Yields the connection id."""
    script = {"steps": [["running", 1.0]], "final": "succeeded"}
    command = [str(Path(sys.executable).parent / "runbridge"), "emulate", "rest", "-q"]
    command += ["--token", TOKEN, "--script", json.dumps(script)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"listening on (http://\S+)", line)
        assert found, f"runbridge emulate said: {line!r}"
        connection = {
            "conn_type": "runbridge",
            "host": found.group(1),
            "password": TOKEN,
            "extra": {"platform": "rest", "options": REST_CONFIG},
        }
        monkeypatch.setenv("AIRFLOW_CONN_RB_FAR", json.dumps(connection))
        yield "rb_far"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_many(emu: Emulator, count: int, seconds: float) -> list[RunRef]:
    from runbridge.airflow_provider import RunbridgeHook

    emu.script(Script([("running", seconds)], final="succeeded"))
    with RunbridgeHook("rb_rest").get_client() as client:
        return [client.launch({"job": "etl"}) for _ in range(count)]


async def first_event(trigger: RunTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("no event")


def test_200_triggers_read_their_connection_once_in_a_thread(
    far_platform: str, reads: list[tuple[str, int]]
) -> None:
    from runbridge.airflow_provider import RunbridgeHook

    with RunbridgeHook(far_platform).get_client() as client:
        refs = [client.launch({"job": "etl"}) for _ in range(200)]
    stalls: list[float] = []

    async def main() -> tuple[list[dict[str, Any]], int]:
        loop_thread = threading.get_ident()
        done = False

        async def watchdog() -> None:  # what Airflow's triggerer measures, every 20 ms
            while not done:
                before = time.monotonic()
                await asyncio.sleep(0.02)
                stalls.append(time.monotonic() - before - 0.02)

        dog = asyncio.create_task(watchdog())
        tasks = []
        for ref in refs:  # started one per turn, as the triggerer's create_triggers does
            tasks.append(
                asyncio.create_task(first_event(RunTrigger(far_platform, ref.to_dict(), poll=FAST)))
            )
            await asyncio.sleep(0)
        events = await asyncio.gather(*tasks)
        done = True
        await dog
        return list(events), loop_thread

    # A full garbage collection walks every object of the process: in this test process (all
    # of Airflow, its ORM, pytest) one took 0.99 s in the middle of this test. That stall is
    # the interpreter's, not the triggers' (the triggerer could gc.freeze() after start-up, as
    # Airflow's dag-processor does); frozen, the collector sees only what the triggers make.
    gc.collect()
    gc.freeze()
    try:
        events, loop_thread = asyncio.run(main())
    finally:
        gc.unfreeze()
    assert [e["kind"] for e in events] == ["done"] * 200, events[0]
    assert [conn for conn, _ in reads] == [far_platform]  # one read for 200 triggers
    assert all(thread != loop_thread for _, thread in reads)  # and not on the loop
    print(f"longest loop stall with 200 triggers: {max(stalls):.3f} s")
    # what remains is the shared client's creation (an SSL context, core/shared.py) and the
    # first requests' imports, once per process: 0.13-0.24 s measured here
    assert max(stalls) < 0.5


def test_waiters_of_one_read_resume_one_per_loop_turn(
    rest: Emulator, reads: list[tuple[str, int]]
) -> None:
    async def main() -> list[int]:
        turn = 0

        def tick() -> None:
            nonlocal turn
            turn += 1
            loop.call_soon(tick)

        loop = asyncio.get_running_loop()
        loop.call_soon(tick)

        async def one() -> int:
            await connection_config("rb_rest")
            return turn

        return list(await asyncio.gather(*(one() for _ in range(50))))

    turns = asyncio.run(main())
    assert len(reads) == 1
    assert len(set(turns)) == 50, "waiters of one read resumed in the same loop turn"


def test_a_slow_connection_read_holds_up_no_other_connection(
    rest: Emulator, reads: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: one asyncio.Lock per loop used to be held across the awaited lookup, so every
    trigger start (and on_kill) waited for any connection's slow read."""
    slow = connection_like(monkeypatch, "rb_slow")
    quick_ref, slow_ref = launch_many(rest, 2, seconds=0.2)

    async def main() -> tuple[float, float]:
        started = time.monotonic()
        slow_task = asyncio.create_task(
            first_event(RunTrigger(slow, slow_ref.to_dict(), poll=FAST))
        )
        await asyncio.sleep(0.1)  # the slow read is under way
        quick = await first_event(RunTrigger("rb_rest", quick_ref.to_dict(), poll=FAST))
        quick_took = time.monotonic() - started
        assert quick["kind"] == "done"
        assert (await slow_task)["kind"] == "done"
        return quick_took, time.monotonic() - started

    quick_took, slow_took = asyncio.run(main())
    assert quick_took < 1.8 < slow_took  # the quick one did not wait the slow read's 2 s


def test_a_trigger_cancelled_while_waiting_for_a_read_does_not_cancel_it(
    rest: Emulator, reads: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = connection_like(monkeypatch, "rb_slow_shared")
    (ref,) = launch_many(rest, 1, seconds=0.2)

    async def main() -> dict[str, Any]:
        first = asyncio.create_task(first_event(RunTrigger(slow, ref.to_dict(), poll=FAST)))
        second = asyncio.create_task(first_event(RunTrigger(slow, ref.to_dict(), poll=FAST)))
        await asyncio.sleep(0.3)
        first.cancel()  # e.g. the triggerer shut this one down
        return await second

    assert asyncio.run(main())["kind"] == "done"
    assert [conn for conn, _ in reads] == [slow]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"options": {"poll": {"first": 1}}}, "bad options"),  # a client setting among options
        ({"poll": {"first": "soon"}}, "poll"),
        ({"retry": 5}, "retry"),
    ],
)
def test_a_bad_connection_setting_is_an_error_event(
    rest: Emulator, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], says: str
) -> None:
    conn_id = connection_like(monkeypatch, "rb_bad", **extra)
    event = asyncio.run(first_event(RunTrigger(conn_id, "rest:abc", poll=FAST)))
    assert event["kind"] == "error" and event["error"] == "ConfigError"
    assert "rb_bad" in event["message"] and says in event["message"]


def test_a_missing_connection_is_an_error_event(rest: Emulator) -> None:
    event = asyncio.run(first_event(RunTrigger("rb_nowhere", "rest:abc", poll=FAST)))
    assert event["kind"] == "error" and event["error"] == "ConfigError"
    assert "rb_nowhere" in event["message"] and "could not be read" in event["message"]


def test_bad_poll_kwargs_are_an_error_event(rest: Emulator) -> None:
    event = asyncio.run(first_event(RunTrigger("rb_rest", "rest:abc", poll={"first": 1, "x": 2})))
    assert event["kind"] == "error" and event["error"] == "ConfigError"
    assert "RunTrigger poll" in event["message"]
