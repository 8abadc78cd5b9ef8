"""ExternalRunResource: configuration only, a secret token, the operations against an emulator,
and Definitions that load in `dagster definitions validate`."""

from __future__ import annotations

import math
from collections.abc import Iterator

import dagster as dg
import pytest

from runbridge.core import (
    ClientConfig,
    ConfigError,
    NotSupported,
    PollSchedule,
    RetryPolicy,
    RunClient,
    RunFailed,
    RunState,
    WaitTimeout,
)
from runbridge.dagster_resources import ExternalRunResource, external_run_asset
from runbridge.testing import Emulator, Relay, Script, create_emulator
from runbridge.testing.rest import REST_CONFIG
from tests.dagster.conftest import resource_for

TOKEN = "rb-resource-token-77"
QUICK = Script([("queued", 0.05), ("running", 0.5)], final="succeeded", outputs={"rows": 3})


@pytest.fixture
def emu(relay: Relay) -> Iterator[Emulator]:
    yield relay.swap(create_emulator("rest", token=TOKEN))
    relay.target = None


def test_every_field_is_described() -> None:
    for name, field in ExternalRunResource.model_fields.items():
        assert field.description, name


def test_token_from_envvar_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_TOKEN", TOKEN)
    resource = ExternalRunResource(
        platform="langgraph", base_url="http://127.0.0.1:1", token=dg.EnvVar("RB_TOKEN")
    )
    assert "token" not in repr(resource) and TOKEN not in repr(resource)
    with resource.get_client() as client:  # outside Dagster, the EnvVar is read here
        assert TOKEN not in repr(client)
    literal = ExternalRunResource(platform="langgraph", base_url="http://127.0.0.1:1", token=TOKEN)
    assert TOKEN not in repr(literal) and TOKEN not in str(literal)


def test_get_client_builds_a_core_client_from_the_fields(emu: Emulator) -> None:
    resource = resource_for(
        emu, token=TOKEN, poll_interval=0.5, poll_max_interval=8.0, error_window=42.0
    )
    config = resource.client_config()
    assert isinstance(config, ClientConfig)
    assert config == ClientConfig(
        "rest",
        emu.base_url,
        TOKEN,
        options=REST_CONFIG,
        request_timeout=5.0,
        retry=RetryPolicy(attempts=3),
        poll=PollSchedule(first=0.5, factor=1.0, cap=8.0),
        error_window=42.0,
    )
    with resource.get_client() as client:
        assert isinstance(client, RunClient)
        assert client.platform == "rest" and client.base_url == emu.base_url
        assert client.poll == PollSchedule(first=0.5, factor=1.0, cap=8.0)
        assert client.retry.attempts == 3
        assert client.request_timeout == 5.0
        assert client.error_window == 42.0  # declared, and now it reaches every wait
    with resource.get_client(error_window=7.0) as client:
        assert client.error_window == 7.0


def test_the_defaults_are_cores() -> None:
    resource = ExternalRunResource(platform="langgraph", base_url="http://127.0.0.1:1")
    assert resource.client_config() == ClientConfig("langgraph", "http://127.0.0.1:1")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"base_url": "ftp://example.com"}, "base_url"),
        ({"base_url": "http://"}, "base_url"),
        ({"platform": "no-such-platform"}, "no-such-platform"),
        ({"options": {"bogus": 1}}, "bogus"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"request_timeout": -1.0}, "request_timeout"),
        ({"error_window": -5.0}, "error_window"),
        ({"error_window": math.nan}, "error_window"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_max_interval": -1.0}, "poll_max_interval"),
        ({"poll_interval": 10.0, "poll_max_interval": 5.0}, "poll_max_interval"),
        ({"poll_backoff": 0.5}, "poll_backoff"),
        ({"request_attempts": 0}, "request_attempts"),
    ],
)
def test_a_bad_field_is_a_config_error_naming_it(fields: dict, named: str) -> None:
    values = {"platform": "langgraph", "base_url": "http://127.0.0.1:1", **fields}
    resource = ExternalRunResource(**values)
    with pytest.raises(ConfigError, match=named):
        resource.client_config()
    with pytest.raises(ConfigError, match=named):
        resource.get_client()


def test_dagster_reads_a_bad_resource_when_it_initializes_it() -> None:
    """The step never starts (nothing is launched): the resource fails as Dagster sets it up."""

    @dg.op
    def never(external_run: ExternalRunResource) -> None:
        raise AssertionError("the op must not run")

    @dg.job
    def job() -> None:
        never()

    bad = ExternalRunResource(platform="langgraph", base_url="http://127.0.0.1:1", error_window=-1)
    with pytest.raises(dg.DagsterResourceFunctionError) as raised:
        job.execute_in_process(resources={"external_run": bad})
    assert isinstance(raised.value.user_exception, ConfigError)
    assert "error_window" in str(raised.value.user_exception)


def test_operations(emu: Emulator) -> None:
    resource = resource_for(emu, token=TOKEN)
    emu.script(QUICK, QUICK, Script([("running", 600.0)]), Script([], final="failed"))
    ref = resource.launch({"job": "nightly"}, key="k-1")
    assert resource.launch({"job": "nightly"}, key="k-1") == ref  # the key re-attaches
    assert resource.get(ref).state in (RunState.PENDING, RunState.RUNNING)
    status = resource.wait(ref, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED and status.outputs == {"rows": 3}
    status = resource.launch_and_wait({"job": "nightly"}, wait_timeout=10)
    assert status.succeeded() and status.ref != ref
    long = resource.launch({"job": "long"})
    with pytest.raises(WaitTimeout):
        resource.wait(long, wait_timeout=0.2)
    resource.cancel(long)
    assert emu.cancels == [long.id]
    assert resource.wait(long, wait_timeout=10).state is RunState.CANCELLED
    with pytest.raises(RunFailed, match="FAILED"):
        resource.launch_and_wait({"job": "nightly"}, wait_timeout=10, check=True)
    with pytest.raises(NotSupported):
        resource.list()
    assert len(emu.launches) == 4


def test_definitions_validate_loadable(emu: Emulator) -> None:
    asset = external_run_asset(name="report", params={"job": "nightly"})
    defs = dg.Definitions(
        assets=[asset],
        resources={"external_run": resource_for(emu, token=dg.EnvVar("RB_TOKEN"))},
    )
    dg.Definitions.validate_loadable(defs)
