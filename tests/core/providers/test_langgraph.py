"""The langgraph provider, sans-IO: canned Agent Server answers in, requests and values out.

Shapes follow docs/platforms/langgraph.md (langgraph-api 0.16.7).
"""

from __future__ import annotations

from typing import Any

import pytest

from runbridge import ConfigError, LaunchSpec, ProtocolError, RunNotFound, RunRef, RunState
from runbridge.core.errors import AuthError, Conflict, RateLimited
from runbridge.core.providers.langgraph import METADATA_KEY, LangGraph, thread_for_key

from .stepper import Canned, step

T = "0b7c9a6e-8a55-4f53-9d9e-1f0f3e2a1b11"
R = "1f0c2d3e-4a5b-7c6d-8e9f-a0b1c2d3e4f5"
REF = RunRef("langgraph", R, {"thread_id": T})


def run(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": R,
        "thread_id": T,
        "assistant_id": "fe096781-5601-53d2-b2f6-0d3403f7e9ca",
        "created_at": "2026-11-25T09:26:45.512475+00:00",
        "updated_at": "2026-11-25T09:26:47+00:00",
        "status": status,
        "metadata": {},
        "kwargs": {},
        "multitask_strategy": "reject",
        **extra,
    }


def thread(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "thread_id": T,
        "status": status,
        "values": {},
        "interrupts": {},
        "error": None,
        **extra,
    }


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("pending", RunState.PENDING),
        ("running", RunState.RUNNING),
        ("success", RunState.SUCCEEDED),
        ("error", RunState.FAILED),
        ("timeout", RunState.TIMED_OUT),
        ("interrupted", RunState.CANCELLED),
        ("paused-by-a-new-server", RunState.UNKNOWN),
    ],
)
def test_status_maps_every_raw_value(raw: str, state: RunState) -> None:
    terminal = state.is_terminal
    answers = [Canned(body=run(raw))] + ([Canned(body=thread("idle"))] if terminal else [])
    requests, status = step(LangGraph().status(REF), *answers)
    assert [r.path for r in requests][:1] == [f"/threads/{T}/runs/{R}"]
    assert len(requests) == (2 if terminal else 1)
    assert status.state is state
    assert status.raw_state == raw
    assert (status.ended_at is not None) == terminal


def test_failed_run_message_comes_from_the_thread() -> None:
    error = {"error": "ValueError", "message": "bad input"}
    _, status = step(
        LangGraph().status(REF),
        Canned(body=run("error")),
        Canned(body=thread("error", error=error)),
    )
    assert status.message == "ValueError: bad input"
    assert status.outputs == {}


def test_success_outputs_and_human_in_the_loop_interrupt() -> None:
    values = {"messages": ["hi"]}
    _, done = step(
        LangGraph().status(REF),
        Canned(body=run("success")),
        Canned(body=thread("idle", values=values)),
    )
    assert done.outputs == {"values": values} and done.message is None
    interrupts = {"task-1": [{"value": "approve?"}]}
    _, paused = step(
        LangGraph().status(REF),
        Canned(body=run("success")),
        Canned(body=thread("interrupted", values=values, interrupts=interrupts)),
    )
    assert paused.state is RunState.SUCCEEDED
    assert paused.outputs["interrupts"] == interrupts
    assert paused.message is not None and "awaiting human input" in paused.message


def test_status_without_thread_reading_and_with_a_run_url() -> None:
    provider = LangGraph(
        read_thread=False, run_url="https://studio.example/t/{thread_id}/r/{run_id}"
    )
    requests, status = step(provider.status(REF), Canned(body=run("success")))
    assert len(requests) == 1
    assert status.url == f"https://studio.example/t/{T}/r/{R}"


def test_launch_on_a_new_thread_creates_it_idempotently() -> None:
    spec = LaunchSpec({"assistant_id": "agent", "input": {"q": 1}}, key="dag.task.run.0")
    requests, ref = step(
        LangGraph().launch(spec), Canned(body=thread("idle")), Canned(body=run("pending"))
    )
    create_thread, create_run = requests
    expected_thread = thread_for_key("dag.task.run.0")
    assert (create_thread.method, create_thread.path) == ("POST", "/threads")
    assert create_thread.json == {
        "thread_id": expected_thread,
        "if_exists": "do_nothing",
        "metadata": {METADATA_KEY: "dag.task.run.0"},
    }
    assert create_thread.retryable  # our own id + do_nothing: safe to resend
    assert create_run.path == f"/threads/{expected_thread}/runs"
    assert create_run.json == {
        "assistant_id": "agent",
        "input": {"q": 1},
        "metadata": {METADATA_KEY: "dag.task.run.0"},
        "multitask_strategy": "reject",
    }
    assert not create_run.retryable
    assert ref == REF


def test_launch_on_a_given_thread_keeps_the_callers_strategy_and_metadata() -> None:
    spec = LaunchSpec(
        {
            "assistant_id": "agent",
            "thread_id": T,
            "metadata": {"team": "ml"},
            "multitask_strategy": "enqueue",
        },
        key="k",
    )
    requests, _ = step(LangGraph().launch(spec), Canned(body=run("pending")))
    (create_run,) = requests
    assert create_run.path == f"/threads/{T}/runs"
    assert create_run.json["multitask_strategy"] == "enqueue"
    assert create_run.json["metadata"] == {"team": "ml", METADATA_KEY: "k"}
    assert "thread_id" not in create_run.json


def test_stateless_launch_keeps_the_run_readable() -> None:
    spec = LaunchSpec({"stateless": True, "input": {}})
    requests, ref = step(LangGraph(assistant_id="agent").launch(spec), Canned(body=run("pending")))
    assert requests[0].path == "/runs"
    assert requests[0].json == {"assistant_id": "agent", "input": {}, "on_completion": "keep"}
    assert ref.scope == {"thread_id": T}
    assert not LangGraph().can_find(spec)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"input": {}}, "assistant_id"),
        ({"assistant_id": "a", "multitask_strategy": "later"}, "multitask_strategy"),
        ({"assistant_id": "a", "stateless": True, "on_completion": "delete"}, "on_completion"),
        ({"assistant_id": "a", "stateless": True, "thread_id": T}, "stateless"),
        ({"assistant_id": "a", "metadata": ["x"]}, "metadata"),
        ({"assistant_id": "a", "thread_id": 7}, "thread_id"),
    ],
)
def test_bad_launch_params_are_rejected_before_any_request(
    params: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        next(LangGraph().launch(LaunchSpec(params)))


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="run_url"):
        LangGraph(run_url="https://x/{nope}")
    with pytest.raises(ConfigError, match="assistant_id"):
        LangGraph(assistant_id="")


def test_find_takes_the_earliest_run_with_the_key() -> None:
    key = "k1"
    runs = [
        run(
            "running",
            run_id="r-late",
            created_at="2026-11-25T10:00:00+00:00",
            metadata={METADATA_KEY: key},
        ),
        run(
            "success",
            run_id="r-other",
            created_at="2026-11-25T08:00:00+00:00",
            metadata={METADATA_KEY: "k2"},
        ),
        run(
            "success",
            run_id="r-early",
            created_at="2026-11-25T09:00:00+00:00",
            metadata={METADATA_KEY: key},
        ),
    ]
    requests, ref = step(
        LangGraph().find(LaunchSpec({"assistant_id": "a"}, key=key)), Canned(body=runs)
    )
    assert requests[0].path == f"/threads/{thread_for_key(key)}/runs"
    assert ref is not None and ref.id == "r-early"


def test_find_on_a_missing_thread_or_without_a_match_is_none() -> None:
    spec = LaunchSpec({"assistant_id": "a"}, key="k")
    _, none = step(LangGraph().find(spec), Canned(404, {"detail": f"Thread with ID {T} not found"}))
    assert none is None
    _, none = step(LangGraph().find(spec), Canned(body=[run("success")]))
    assert none is None


def test_join_then_reads_the_status() -> None:
    requests, status = step(
        LangGraph().join(REF, 30.0),  # type: ignore[arg-type]
        Canned(raw=b"\n\n" + b'{"result": 1}'),
        Canned(body=run("success")),
        Canned(body=thread("idle", values={"result": 1})),
    )
    assert (
        requests[0].path.endswith("/join") and requests[0].long_poll and requests[0].timeout == 30.0
    )
    assert not requests[0].retryable
    assert status.state is RunState.SUCCEEDED


def test_join_of_an_unknown_run_on_the_inmem_server_is_not_found() -> None:
    body = {"__error__": {"error": "HTTPException", "message": "404: Run not found"}}
    with pytest.raises(RunNotFound, match="Run not found"):
        step(LangGraph().join(REF, 5.0), Canned(body=body))  # type: ignore[arg-type]


def test_cancel_interrupts_and_tolerates_an_already_finished_run() -> None:
    requests, _ = step(LangGraph().cancel(REF), Canned(202))
    assert requests[0].path == f"/threads/{T}/runs/{R}/cancel"
    assert requests[0].params == {"action": "interrupt", "wait": False}
    assert requests[0].retryable
    gone = Canned(404, {"detail": "No matching runs to cancel. Please verify ..."})
    requests, _ = step(LangGraph().cancel(REF), gone, Canned(body=run("success")))
    assert len(requests) == 2
    with pytest.raises(RunNotFound, match="No runs found"):
        step(
            LangGraph().cancel(REF),
            Canned(404, {"detail": "No runs found to cancel."}),
            Canned(404, {"detail": "Not Found"}),
        )


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "text"),
    [
        (403, {"detail": "Invalid token"}, {}, AuthError, "Invalid token"),
        (409, {"detail": "Thread is already running a task."}, {}, Conflict, "already running"),
        (404, {"detail": "Not Found"}, {}, RunNotFound, "Not Found"),
        (429, {"detail": "slow down"}, {"retry-after": "7"}, RateLimited, "slow down"),
    ],
)
def test_error_bodies(
    status: int, body: Any, headers: dict[str, str], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text) as info:
        step(LangGraph().status(REF), Canned(status, body, headers))
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 7.0


def test_malformed_answers_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        step(LangGraph().status(REF), Canned(raw=b'{"status": "runn'))
    with pytest.raises(ProtocolError, match="status"):
        step(LangGraph().status(REF), Canned(body={"run_id": R}))


def test_auth_header_and_ref_scope() -> None:
    assert LangGraph().auth_headers("tok") == {"x-api-key": "tok"}
    with pytest.raises(ConfigError, match="thread_id"):
        LangGraph().make_ref(R)
    assert LangGraph().make_ref(R, thread_id=T) == REF
