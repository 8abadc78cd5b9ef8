"""Default run page URLs, derived from the client's base URL where the platform's app URL
follows from its API URL (W&B, LangGraph via LangSmith Studio, Flyte), and the ``url_known``
event a real client emits when a W&B Launch queue item gets its run (the W&B emulator on
loopback). Vi, Lume and ``rest`` have no derivable page (docs/platforms/)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from runbridge.core import RunClient, RunRef, RunState, RunStatus
from runbridge.core.errors import ConfigError
from runbridge.core.flows import Event
from runbridge.core.providers.flyte import Flyte
from runbridge.core.providers.langgraph import STUDIO_THREAD_URL, LangGraph
from runbridge.core.providers.wandb import WandB, app_url_for
from runbridge.core.schedule import PollSchedule
from runbridge.testing import Script, serve
from runbridge.testing.wandb import DEFAULT_ENTITY

from .providers.stepper import Canned, step
from .providers.test_langgraph import REF as LG_REF
from .providers.test_langgraph import run as langgraph_run
from .providers.test_wandb import REF as WANDB_REF
from .providers.test_wandb import run as wandb_run
from .providers.test_wandb import with_run

# -- W&B -----------------------------------------------------------------------------------------
WANDB_APIS = [
    "https://api.wandb.ai",
    "https://api.wandb.ai/",
    "https://api.forge.coreweave.com",
    "https://api.qa.wandb.ai",
    "https://api.wandb.test",
    "https://api.acme.example",  # a dedicated cloud: app.<same>
    "https://wandb.acme.internal:8443",  # W&B Server: the app on the same host
    "http://127.0.0.1:8080",
]


@pytest.mark.parametrize("api", WANDB_APIS)
def test_wandb_app_url_is_the_sdks(api: str) -> None:
    """The derivation is wandb's own (``wandb.util.api_to_app_url``, the SDK installed here)."""
    util = pytest.importorskip("wandb.util")
    assert app_url_for(api) == util.api_to_app_url(api.rstrip("/")).rstrip("/")


@pytest.mark.parametrize(
    ("api", "page"),
    [
        ("https://api.wandb.ai", "https://forge.coreweave.com/wandb/acme/vision/runs/abc123"),
        ("https://wandb.acme.internal", "https://wandb.acme.internal/acme/vision/runs/abc123"),
        ("https://api.acme.example", "https://app.acme.example/acme/vision/runs/abc123"),
    ],
)
def test_wandb_run_url_defaults_to_the_app_of_the_clients_base_url(api: str, page: str) -> None:
    provider = WandB()
    provider.base_url = api  # as the client sets it
    _, status = step(provider.status(WANDB_REF), with_run(wandb_run("running")))
    assert status.url == page


@pytest.mark.parametrize("api", WANDB_APIS)
def test_a_wandb_run_page_reads_back_as_its_run(api: str) -> None:
    """A sensor may be given the page a launch logged: every default URL reads back."""
    provider = WandB()
    provider.base_url = api
    ref = RunRef("wandb", "run 1/x", {"entity": "acme team", "project": "vision"})
    page = provider.run_url(ref)
    assert page is not None
    assert provider.make_ref(page) == ref


def test_wandb_app_url_option_wins_and_empty_means_no_url() -> None:
    chosen = WandB(app_url="https://wandb.ai")
    chosen.base_url = "https://api.wandb.ai"
    _, status = step(chosen.status(WANDB_REF), with_run(wandb_run("running")))
    assert status.url == "https://wandb.ai/acme/vision/runs/abc123"
    off = WandB(app_url="")
    off.base_url = "https://api.wandb.ai"
    _, status = step(off.status(WANDB_REF), with_run(wandb_run("running")))
    assert status.url is None
    with pytest.raises(ConfigError, match="app_url"):
        WandB(app_url="wandb.ai")
    with pytest.raises(ConfigError, match="app_url"):
        WandB(app_url=5)  # type: ignore[arg-type]


def test_a_queued_wandb_launch_announces_its_run_page_once_it_has_a_run() -> None:
    """A real client against the W&B emulator: the queue item has no page; the emulated agent
    starts the run, and the wait emits ``url_known`` with the run's page, once."""
    events: list[Event] = []
    with serve("wandb", token="k" * 40, pickup=1.0) as emu:
        emu.script(Script([("running", 0.3)], final="finished"))
        with RunClient(
            "wandb", emu.base_url, "k" * 40, poll=PollSchedule.fixed(0.05), hooks=[events.append]
        ) as client:
            spec = {"queue": "default", "entity": DEFAULT_ENTITY, "project": "vision"}
            queued = client.launch({**spec, "docker_image": "t:1"}, key="dag.train.1")
            assert queued.scope["kind"] == "queued"
            first = client.get(queued)
            assert first.url is None  # still in the queue: no run, no page
            status = client.wait(queued, wait_timeout=20)
    assert status.state is RunState.SUCCEEDED
    known = [e for e in events if e.kind == "url_known"]
    assert len(known) == 1
    (event,) = known
    assert event.ref == queued and event.status is not None
    assert event.status.url == status.url
    # the emulator's base URL is a W&B Server's: the app is on the same host
    assert status.url == f"{emu.base_url}/{DEFAULT_ENTITY}/vision/runs/{status.ref.id}"
    # statuses before it (the queue item's) had no URL
    before = [e for e in events if e.kind == "status"]
    assert before[0].status is not None and before[0].status.url is None


# -- LangGraph -----------------------------------------------------------------------------------
def _lg_status(provider: LangGraph) -> RunStatus:
    _, status = step(provider.status(LG_REF), Canned(200, langgraph_run("running")))
    assert isinstance(status, RunStatus)
    return status


def test_langgraph_defaults_to_the_runs_thread_in_langsmith_studio() -> None:
    provider = LangGraph(read_thread=False)
    provider.base_url = "https://my-agent-1a2b.us.langgraph.app"
    url = _lg_status(provider).url
    assert url is not None
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "smith.langchain.com")
    assert parts.path == f"/studio/thread/{LG_REF.scope['thread_id']}"
    assert parse_qs(parts.query) == {"baseUrl": ["https://my-agent-1a2b.us.langgraph.app"]}
    assert provider.run_url == STUDIO_THREAD_URL


def test_langgraph_without_a_base_url_has_no_studio_link_and_empty_means_none() -> None:
    assert _lg_status(LangGraph(read_thread=False)).url is None  # no client: no deployment
    off = LangGraph(read_thread=False, run_url="")
    off.base_url = "https://my-agent-1a2b.us.langgraph.app"
    assert _lg_status(off).url is None


def test_langgraph_templates_get_quoted_ids_and_the_base_url() -> None:
    provider = LangGraph(
        read_thread=False,
        run_url="https://eu.smith.langchain.com/studio/thread/{thread_id}?baseUrl={base_url}",
    )
    provider.base_url = "http://127.0.0.1:2024"
    url = _lg_status(provider).url or ""
    assert url.startswith(
        f"https://eu.smith.langchain.com/studio/thread/{LG_REF.scope['thread_id']}?"
    )
    assert parse_qs(urlsplit(url).query) == {"baseUrl": ["http://127.0.0.1:2024"]}
    with pytest.raises(ConfigError, match="run_url"):
        LangGraph(run_url="https://x/{deployment}")


# -- Flyte: the console is the API host (the SDK's Console.run_url) ------------------------------
def test_flyte_defaults_to_the_console_on_the_api_host() -> None:
    provider = Flyte()
    provider.base_url = "https://acme.hosted.unionai.cloud"
    ref = RunRef("flyte", "r1", {"project": "p", "domain": "development"})
    assert provider.run_url(ref) == (
        "https://acme.hosted.unionai.cloud/v2/domain/development/project/p/runs/r1"
    )
