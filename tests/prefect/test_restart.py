"""A retried or restarted flow run re-attaches to the runs its earlier attempt launched (issue
14, defect 3): the launch key is derived from identities that survive the restart (the flow
run id, the task's stable key, what is launched), not from the task run id, which Prefect
renews. The launch records kept in Prefect's result store expire and are swept.

(The restart of a *crashed* flow run, its process SIGKILLed under a real worker, is in
tests/deploy/prefect.)"""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from typing import Any

import pytest
from prefect import flow, unmapped

from runbridge import RunState, WaitTimeout
from runbridge.core.errors import ConfigError
from runbridge.core.planner import LaunchRecord
from runbridge.prefect_blocks import ExternalRunJob, _runtime, launch_and_wait
from runbridge.testing import Script

from .conftest import swap_emulator
from .helpers import flow_run_logs, task_runs

SLOW = Script([("queued", 0.05), ("running", 1.5)], final="succeeded", outputs={"ok": 1})


@pytest.fixture
def rest_emu(relay):
    return swap_emulator(relay, "rest", script=SLOW)


OUTLASTS_THE_WAIT = Script([("queued", 0.05), ("running", 1.0)], final="succeeded")
"""A run that outlasts the first attempt's 0.3 s wait (the default ~0.3 s run raced it: on a
loaded machine the wait saw the run end) and ends before the retry, 2 s later, starts."""


def test_a_flow_run_retry_reattaches_to_the_runs_of_its_first_attempt(rest_emu, rest_credentials):
    """The first attempt gives up waiting (wait_timeout) with three mapped runs going; Prefect
    retries the flow run (new task runs, new task run ids); every task re-attaches."""
    topics = ["a", "b", "c"]
    rest_emu.script(*[OUTLASTS_THE_WAIT] * len(topics))

    @flow(retries=1, retry_delay_seconds=2)  # the retry starts after the run ended
    def nightly():
        return launch_and_wait.map(
            unmapped(rest_credentials),
            [{"job": topic} for topic in topics],
            wait_timeout=unmapped(0.3),
            poll=unmapped(0.05),
        ).result()

    state = nightly(return_state=True)
    statuses = state.result()
    assert [s.state for s in statuses] == [RunState.SUCCEEDED] * 3
    assert len(rest_emu.launches) == 3  # not six
    assert sorted(run.data["job"] for run in rest_emu.runs.values()) == topics
    flow_run_id = state.state_details.flow_run_id
    runs = task_runs(flow_run_id)
    assert len(runs) == 6 and len({r.id for r in runs}) == 6  # Prefect made new task runs
    logs = flow_run_logs(flow_run_id)
    assert sum("Re-attached to rest run" in line for line in logs) == 3, logs


def test_a_flow_run_retry_reattaches_in_the_flows_own_code(rest_emu, rest_credentials):
    """The job block triggered in the flow's body (no task): the key comes from the flow run."""
    rest_emu.script(OUTLASTS_THE_WAIT)

    @flow(retries=1, retry_delay_seconds=2)  # the retry starts after the run ended
    def nightly():
        job = ExternalRunJob(
            credentials=rest_credentials,
            params={"job": "body"},
            wait_timeout=0.3,
            poll_interval=0.05,
        )
        return job.trigger().wait_for_completion()

    state = nightly(return_state=True)
    assert state.result().state is RunState.SUCCEEDED
    assert len(rest_emu.launches) == 1


def test_without_a_retry_the_wait_timeout_stands(rest_emu, rest_credentials):
    """Control for the two tests above: the first attempt does give up."""

    @flow
    def nightly():
        return launch_and_wait(rest_credentials, {"job": "x"}, wait_timeout=0.3, poll=0.05)

    with pytest.raises(WaitTimeout):
        nightly(return_state=True).result()


def test_mapped_launches_of_distinct_params_get_distinct_keys():
    """Keys of one task run's launches depend on what is launched, not on the order in which
    threads reach them: a restart that maps in another order finds the same runs."""
    from uuid import uuid4

    flow_run = uuid4()

    def keys(order: list[str], flow_run_count: int) -> dict[str, str]:
        out = {}
        for topic in order:
            identity = _runtime.RunIdentity(
                flow_run, uuid4(), 1, "t", task_key="mod.t-abc", flow_run_count=flow_run_count
            )
            text = _runtime.launch_fingerprint("rest", "http://x", {"job": topic})
            out[topic] = _runtime.derive_key(identity, text)
        return out

    first = keys(["a", "b", "c"], flow_run_count=1)
    assert len(set(first.values())) == 3
    assert keys(["c", "a", "b"], flow_run_count=2) == first
    # equal params launched twice in one attempt: two keys, the same two on a restart
    twice = [keys(["same"], 3)["same"], keys(["same"], 3)["same"]]
    assert twice[0] != twice[1]
    assert [keys(["same"], 4)["same"], keys(["same"], 4)["same"]] == twice


# -- the records expire and are swept ---------------------------------------------------------


def _store(tmp_path: Any) -> Any:
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    return ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path)))


def test_records_expire(tmp_path, monkeypatch):
    """A record older than the TTL is not read back: nothing to re-attach to."""
    store = _store(tmp_path)
    monkeypatch.setattr("prefect.results.get_result_store", lambda: store)
    monkeypatch.setenv(_runtime.TTL_ENV, "1")
    record = LaunchRecord("k", None, "starting")

    async def scenario() -> tuple[list[LaunchRecord], list[LaunchRecord]]:
        await _runtime.save_record("expiring", record)
        _runtime._memory.clear()
        fresh = await _runtime.read_records("expiring")
        await asyncio.sleep(1.2)
        _runtime._memory.clear()
        return fresh, await _runtime.read_records("expiring")

    fresh, later = asyncio.run(scenario())
    assert fresh == [record] and later == []


def test_the_sweep_deletes_only_old_launch_records(tmp_path, monkeypatch):
    store = _store(tmp_path)
    old = tmp_path / f"{_runtime.RECORD_PREFIX}old"
    new = tmp_path / f"{_runtime.RECORD_PREFIX}new"
    other = tmp_path / "some-prefect-result"
    for path in (old, new, other):
        path.write_text("{}")
    week_and_a_day = time.time() - datetime.timedelta(days=8).total_seconds()
    os.utime(old, (week_and_a_day, week_and_a_day))
    os.utime(other, (week_and_a_day, week_and_a_day))
    monkeypatch.setattr(_runtime, "_pruned", {})
    assert _runtime.prune_expired(store) == 1
    assert not old.exists() and new.exists() and other.exists()
    # at most one sweep per directory every PRUNE_EVERY seconds
    os.utime(new, (week_and_a_day, week_and_a_day))
    assert _runtime.prune_expired(store) == 0 and new.exists()


def test_records_of_a_flow_run_are_swept_when_saved(monkeypatch, relay):
    """Through a real flow run: the task's save sweeps the default local result storage."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

    storage = os.path.expanduser(str(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()))
    os.makedirs(storage, exist_ok=True)
    stale = os.path.join(storage, f"{_runtime.RECORD_PREFIX}stale-test")
    with open(stale, "w") as out:
        out.write("{}")
    ancient = time.time() - datetime.timedelta(days=30).total_seconds()
    os.utime(stale, (ancient, ancient))
    monkeypatch.setattr(_runtime, "_pruned", {})
    emu = swap_emulator(relay, "rest", script=Script([("running", 0.1)], final="succeeded"))
    from runbridge.prefect_blocks import RunbridgeCredentials
    from runbridge.testing.rest import REST_CONFIG

    from .conftest import TOKEN

    conn = RunbridgeCredentials(
        platform="rest", base_url=emu.base_url, token=TOKEN, options=REST_CONFIG
    )

    @flow
    def nightly():
        return launch_and_wait(conn, {"job": "sweep"}, poll=0.05)

    assert nightly().state is RunState.SUCCEEDED
    assert not os.path.exists(stale)
    kept = [name for name in os.listdir(storage) if name.startswith(_runtime.RECORD_PREFIX)]
    assert kept  # this flow run's own record stays


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_a_bad_ttl_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(_runtime.TTL_ENV, value)
    with pytest.raises(ConfigError, match=_runtime.TTL_ENV):
        _runtime.record_ttl()
