"""Conformance of the W&B emulator with the vendor SDK (``wandb`` 0.31, its public API client).

``wandb.Api`` is pointed at the emulator (``overrides={"base_url": ...}``, the same setting as
``WANDB_BASE_URL``) and reads the same runs that runbridge reads: state, summary, names, URL,
creation time, not-found and auth failures. Launch and stop are checked both ways: items the
SDK pushes are followed by runbridge, items runbridge pushes are followed by ``QueuedRun``; a
stop from either side is seen by the other. The SDK's GraphQL goes through its ``wandb-core``
sidecar (a Go binary in the wheel), so these requests are the real client's, byte for byte.

Skipped when ``wandb`` is not installed (see docs/platforms/wandb.md for the environment).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

wandb = pytest.importorskip("wandb")

from wandb.apis.public import Run as SdkRun  # noqa: E402
from wandb.errors import AuthenticationError, CommError  # noqa: E402
from wandb.sdk.launch.api import LaunchApi  # noqa: E402

from runbridge.core import AuthError, PollSchedule, RunClient, RunNotFound, RunState  # noqa: E402
from runbridge.core.models import parse_time  # noqa: E402
from runbridge.core.providers.wandb import app_url_for, run_id_for_key  # noqa: E402
from runbridge.testing import Script, serve  # noqa: E402
from runbridge.testing.wandb import DEFAULT_ENTITY, WandBEmulator  # noqa: E402

KEY = "conformance_key_" + "0123456789" * 3  # the SDK checks the format: 40+ word characters
E, P = DEFAULT_ENTITY, "vision"
SUMMARY = {"val_loss": 0.125, "acc": 0.9, "epoch": 10, "eval": {"f1": 0.8}, "_step": 99}
LAUNCH = {"queue": "default", "entity": E, "project": P, "docker_image": "trainer:1"}


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the SDK's files in a temp dir and its settings away from the caller's."""
    home = str(tmp_path_factory.mktemp("wandb"))
    names = ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    cleared = ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_MODE")
    saved = {name: os.environ.get(name) for name in (*names, *cleared, "WANDB_SILENT")}
    os.environ.update({name: home for name in names})
    os.environ["WANDB_SILENT"] = "true"
    for name in cleared:
        os.environ.pop(name, None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def emu(wandb_env: None) -> Iterator[WandBEmulator]:
    with serve("wandb", token=KEY, pickup=0.05) as emulator:
        assert isinstance(emulator, WandBEmulator)
        yield emulator


@pytest.fixture(scope="module")
def api(emu: WandBEmulator) -> Any:
    """``wandb.Api`` plus the Launch operations, on the emulator."""
    return LaunchApi(api_key=KEY, overrides={"base_url": emu.base_url}, timeout=10)


@pytest.fixture(scope="module")
def rb(emu: WandBEmulator) -> Iterator[RunClient]:
    client = RunClient(
        "wandb",
        emu.base_url,
        KEY,
        poll=PollSchedule.fixed(0.05),
        app_url=app_url_for(emu.base_url),
    )
    with client:
        yield client


def path(run_id: str) -> str:
    return f"{E}/{P}/{run_id}"


@pytest.mark.parametrize(
    "api_url",
    [
        "https://api.wandb.ai",
        "https://api.forge.coreweave.com",
        "https://api.example.com",
        "https://wandb.corp.example/",
        "http://127.0.0.1:8080",
    ],
)
def test_run_urls_use_the_sdks_app_url(api_url: str) -> None:
    from wandb.util import api_to_app_url

    assert app_url_for(api_url) == api_to_app_url(api_url.rstrip("/"))


# -- reading runs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "state",
    ["pending", "running", "preempting", "finished", "failed", "crashed", "killed", "preempted"],
)
def test_the_sdk_and_runbridge_read_the_same_run(
    emu: WandBEmulator, api: Any, rb: RunClient, state: str
) -> None:
    run = emu.add_run(
        run_id=f"same-{state}", project=P, state=state, summary=SUMMARY, display_name="brisk-sun"
    )
    sdk = api.run(path(f"same-{state}"))
    status = rb.get(rb.ref(path(f"same-{state}")))
    assert sdk.state == status.raw_state == state
    assert sdk.summary_metrics == status.outputs["summary"] == SUMMARY
    assert sdk.id == status.ref.id == f"same-{state}"
    assert (sdk.entity, sdk.project) == (status.ref.scope["entity"], status.ref.scope["project"])
    assert sdk.name == status.outputs["display_name"] == "brisk-sun"
    assert sdk.url == status.url == f"{emu.base_url}/{E}/{P}/runs/same-{state}"
    assert parse_time(sdk.created_at) == status.created_at is not None
    assert sdk.storage_id == run.data["storage_id"]


def test_both_clients_authenticate_the_same_way(
    emu: WandBEmulator, api: Any, rb: RunClient
) -> None:
    emu.add_run(run_id="auth", project=P, state="running")
    before = len(emu.requests)
    api.run(path("auth")).load(force=True)
    rb.get(rb.ref(path("auth")))
    headers = {r.headers.get("authorization") for r in emu.requests[before:]}
    assert len(headers) == 1 and headers.pop() == rb._headers["Authorization"]


def test_a_run_as_it_progresses(emu: WandBEmulator, api: Any, rb: RunClient) -> None:
    script = Script([("pending", 0.3), ("running", 0.3)], final="finished", outputs=SUMMARY)
    emu.add_run(script, "progress", project=P)
    sdk = api.run(path("progress"))
    assert sdk.state in ("pending", "running") and sdk.summary_metrics in ({}, SUMMARY)
    status = rb.wait(rb.ref(path("progress")), wait_timeout=10, check=True)
    sdk.wait_until_finished()  # returns at once: the run is finished (one RunState query)
    assert sdk.load(force=True)["state"] == status.raw_state == "finished"
    assert sdk.summary_metrics == status.outputs["summary"] == SUMMARY


def test_not_found_and_bad_key(emu: WandBEmulator, api: Any, rb: RunClient) -> None:
    emu.add_run(run_id="exists", project=P, state="running")
    with pytest.raises(CommError, match="Could not find run"):
        api.run(path("missing"))
    with pytest.raises(RunNotFound, match="no run 'missing'"):
        rb.get(rb.ref(path("missing")))
    wrong = "wrong_key_" + "9" * 40
    with pytest.raises(AuthenticationError):
        wandb.Api(api_key=wrong, overrides={"base_url": emu.base_url}, timeout=10)
    with (
        RunClient("wandb", emu.base_url, wrong) as stranger,
        pytest.raises(AuthError, match="permission denied"),
    ):
        stranger.get(stranger.ref(path("exists")))


def test_runs_created_and_updated_by_the_sdk(api: Any, rb: RunClient) -> None:
    created = SdkRun.create(api, run_id="made-by-sdk", project=P, entity=E, state="pending")
    assert created.state == "pending"
    ref = rb.ref(path("made-by-sdk"))
    assert (rb.get(ref).state, rb.get(ref).raw_state) == (RunState.PENDING, "pending")
    assert api.run(path("made-by-sdk")).update_state("failed") is True
    assert (rb.get(ref).state, rb.get(ref).raw_state) == (RunState.FAILED, "failed")


# -- stop -------------------------------------------------------------------------------------------------
def test_a_stop_from_either_side_is_seen_by_the_other(
    emu: WandBEmulator, api: Any, rb: RunClient
) -> None:
    long = Script([("running", 60.0)], final="finished")
    emu.add_run(long, "stop-sdk", project=P)
    api.run(path("stop-sdk")).stop()
    status = rb.wait(rb.ref(path("stop-sdk")), wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "killed")

    emu.add_run(long, "stop-rb", project=P)
    assert api.check_stop_requested(P, E, "stop-rb") is False
    rb.cancel(rb.ref(path("stop-rb")))
    assert api.check_stop_requested(P, E, "stop-rb") is True
    assert api.run(path("stop-rb")).load(force=True)["state"] == "killed"
    assert emu.stops[-2:] == [path("stop-sdk"), path("stop-rb")]


# -- W&B Launch ---------------------------------------------------------------------------------------------
def test_the_sdk_follows_a_runbridge_launch(emu: WandBEmulator, api: Any, rb: RunClient) -> None:
    emu.script(Script([("running", 0.2)], final="finished", outputs=SUMMARY))
    ref = rb.launch(LAUNCH, key="conformance.launch.1")
    queued = api.queued_run(E, P, "default", ref.id, "model-registry")
    assert queued.state in ("pending", "claimed")
    sdk_run = queued.wait_until_running()
    status = rb.wait(ref, wait_timeout=10, check=True)
    assert sdk_run.id == status.ref.id == run_id_for_key("conformance.launch.1")
    assert sdk_run.load(force=True)["state"] == status.raw_state == "finished"
    assert sdk_run.summary_metrics == status.outputs["summary"]
    assert queued.state == "claimed"


def test_runbridge_follows_an_sdk_push(emu: WandBEmulator, api: Any, rb: RunClient) -> None:
    emu.script(Script([("running", 0.1)], final="failed"))
    spec = {"entity": E, "project": P, "docker": {"docker_image": "x:1"}, "run_id": "sdk-push"}
    pushed = api.push_to_run_queue_by_name(E, "model-registry", "default", json.dumps(spec), None)
    assert pushed["runSpec"] == spec  # the SDK decodes the echoed JSONString
    ref = rb.ref(pushed["runQueueItemId"], kind="queued", entity=E, project=P, queue="default")
    status = rb.wait(ref, wait_timeout=10)
    assert (status.ref.id, status.state, status.raw_state) == (
        "sdk-push",
        RunState.FAILED,
        "failed",
    )
    assert emu.launches[-1] == spec


def test_an_older_server_without_run_spec_on_the_push_payload(wandb_env: None) -> None:
    with serve("wandb", token=KEY, pickup=0.05, legacy_push=True) as legacy:
        assert isinstance(legacy, WandBEmulator)
        api = LaunchApi(api_key=KEY, overrides={"base_url": legacy.base_url}, timeout=10)
        spec = {"entity": E, "project": P, "docker": {"docker_image": "x:1"}}
        pushed = api.push_to_run_queue_by_name(
            E, "model-registry", "default", json.dumps(spec), None
        )
        assert set(pushed) == {"runQueueItemId"}
        with RunClient("wandb", legacy.base_url, KEY) as client:
            ref = client.launch(LAUNCH)
        assert ref.scope["kind"] == "queued"
        kinds = [kind for kind, _ in legacy.graphql]
        assert kinds.count("invalid") == 2  # each client's first push, refused as the SDK expects
        assert len(legacy.launches) == 2


def test_deleting_a_queued_launch_from_either_side(
    emu: WandBEmulator, api: Any, rb: RunClient
) -> None:
    emu.pickup = 60.0
    try:
        spec = {"entity": E, "project": P, "docker": {"docker_image": "x:1"}}
        pushed = api.push_to_run_queue_by_name(
            E, "model-registry", "default", json.dumps(spec), None
        )
        api.queued_run(E, P, "default", pushed["runQueueItemId"], "model-registry").delete()
        ref = rb.ref(pushed["runQueueItemId"], kind="queued", entity=E, project=P, queue="default")
        # an item gone before any run started reads as cancelled (raw state "deleted")
        gone = rb.get(ref)
        assert (gone.state, gone.raw_state) == (RunState.CANCELLED, "deleted")

        mine = rb.launch(LAUNCH)
        rb.cancel(mine)
        assert rb.get(mine).state is RunState.CANCELLED
        with pytest.raises(ValueError, match="Could not find QueuedRunItem"):
            _ = api.queued_run(E, P, "default", mine.id, "model-registry").state
    finally:
        emu.pickup = 0.05
