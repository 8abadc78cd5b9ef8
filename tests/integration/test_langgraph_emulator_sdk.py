"""Conformance of the LangGraph emulator with the vendor SDK (``langgraph_sdk``).

The SDK is the reference client: if it can drive the emulator through a run's whole life
(create, get, list, join, wait, cancel, multitask strategies, errors), the emulator speaks
the Agent Server's wire protocol. Where docs/platforms/langgraph.md records a fact verified
against a real ``langgraph-api`` 0.16.7 server ([V]), the test says so and checks the same
thing here. Scripts are sub-second and the join heartbeat is shortened to 0.2 s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

langgraph_sdk = pytest.importorskip("langgraph_sdk")

from langgraph_sdk import get_client, get_sync_client  # noqa: E402
from langgraph_sdk.errors import (  # noqa: E402
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)

from runbridge.testing import Script, serve  # noqa: E402
from runbridge.testing.langgraph import LangGraphEmulator  # noqa: E402

TOKEN = "test-key"
AGENT_ID = "fe096781-5601-53d2-b2f6-0d3403f7e9ca"  # uuid5 of "agent" [V]
REJECT = (
    "Thread is already running a task. Wait for it to finish or choose a different "
    "multitask strategy."
)
TERMINAL = (
    "No matching runs to cancel. Please verify the thread ID and run IDs are correct, and the "
    "runs haven't been deleted or completed."
)
HEARTBEAT = 0.2


@pytest.fixture
def emu() -> Iterator[LangGraphEmulator]:
    with serve("langgraph", token=TOKEN, heartbeat=HEARTBEAT, pickup=0.05) as emulator:
        assert isinstance(emulator, LangGraphEmulator)
        yield emulator


@pytest.fixture
def client(emu: LangGraphEmulator) -> Any:
    return get_sync_client(url=emu.base_url, api_key=TOKEN, timeout=30)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def status_of(client: Any, thread_id: str, run_id: str) -> str:
    status: str = client.runs.get(thread_id, run_id)["status"]
    return status


def is_rfc3339_utc(value: str) -> bool:
    return value.endswith("+00:00") and datetime.fromisoformat(value).utcoffset() is not None


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- meta and auth -----------------------------------------------------------------------------


def test_ok_info_and_auth(emu: LangGraphEmulator, client: Any) -> None:
    # /ok is outside the auth middleware; the body is the in-memory server's [V]
    ok = httpx.get(f"{emu.base_url}/ok")
    assert (ok.status_code, ok.json()) == (200, {"ok": True, "services": {}})
    assert client.http.get("/info")["version"] == "0.16.7"

    # 403 with {"detail": ...}, mapped by the SDK to PermissionDeniedError (doc §8)
    anonymous = get_sync_client(url=emu.base_url, api_key=None)
    with pytest.raises(PermissionDeniedError) as missing:
        anonymous.threads.create()
    assert missing.value.message == "Missing authentication headers"
    wrong = get_sync_client(url=emu.base_url, api_key="nope")
    with pytest.raises(PermissionDeniedError) as invalid:
        wrong.threads.create()
    assert invalid.value.message == "Invalid token"
    assert invalid.value.response.status_code == 403
    # the SDK sends only x-api-key (doc §8)
    sent = emu.requests_to("POST", "/threads")[-1]
    assert sent.headers["x-api-key"] == "nope"
    assert "authorization" not in sent.headers


# -- threads -------------------------------------------------------------------------------------


def test_thread_create_get_delete(client: Any) -> None:
    thread = client.threads.create(metadata={"k": "v", "thread_id": "reserved"})
    tid = thread["thread_id"]
    assert uuid.UUID(tid).version == 7
    assert thread["status"] == "idle"
    assert thread["metadata"] == {"k": "v"}  # reserved metadata keys are stripped [V]
    assert thread["values"] is None
    assert is_rfc3339_utc(thread["created_at"])
    assert client.threads.get(tid)["thread_id"] == tid

    with pytest.raises(ConflictError) as exists:
        client.threads.create(thread_id=tid)
    assert exists.value.message == f"Thread with ID {tid} already exists"  # [V]
    # do_nothing returns the existing thread unchanged, metadata not merged [V]
    same = client.threads.create(thread_id=tid, if_exists="do_nothing", metadata={"x": 1})
    assert same == client.threads.get(tid)
    assert same["metadata"] == {"k": "v"}

    with pytest.raises(UnprocessableEntityError) as bad:
        client.threads.create(thread_id="not-a-uuid")
    assert bad.value.message == "Invalid thread ID: must be a UUID"  # [V]

    mine = str(uuid.uuid4())
    assert client.threads.create(thread_id=mine)["thread_id"] == mine
    client.threads.delete(mine)
    with pytest.raises(NotFoundError) as gone:
        client.threads.get(mine)
    assert gone.value.message == f"Thread with ID {mine} not found"  # [V]


# -- a run's life ------------------------------------------------------------------------------


def test_run_lifecycle_pending_running_success(emu: LangGraphEmulator, client: Any) -> None:
    thread = client.threads.create(metadata={"k": "v"})
    tid = thread["thread_id"]
    emu.script(Script([("pending", 0.3), ("running", 0.3)], outputs={"answer": 42}))
    created: list[Any] = []
    run = client.runs.create(
        tid,
        "agent",
        input={"question": "?"},
        metadata={"runbridge_key": "K", "run_id": "stripped"},
        config={"metadata": {"cm": 1}},
        on_run_created=created.append,
    )
    rid = run["run_id"]
    # the Run JSON (doc §3.1)
    assert uuid.UUID(rid).version == 7
    assert run["thread_id"] == tid
    assert run["assistant_id"] == AGENT_ID  # graph name -> system assistant UUID [V]
    assert run["status"] == "pending"
    assert run["multitask_strategy"] == "enqueue"  # the default [V]
    assert run["metadata"] == {
        "created_by": "system",
        "k": "v",  # thread metadata is merged in [V]
        "graph_id": "agent",
        "assistant_id": AGENT_ID,
        "cm": 1,
        "runbridge_key": "K",
    }
    assert run["kwargs"]["input"] == {"question": "?"}
    assert run["kwargs"]["temporary"] is False
    assert is_rfc3339_utc(run["created_at"]) and is_rfc3339_utc(run["updated_at"])
    # Content-Location carries the thread for a stateful run
    assert created and created[0]["run_id"] == rid and created[0]["thread_id"] == tid
    assert emu.launches[-1]["metadata"] == {"runbridge_key": "K", "run_id": "stripped"}
    assert client.threads.get(tid)["status"] == "busy"

    seen: list[str] = []
    while not seen or seen[-1] not in ("success", "error", "timeout", "interrupted"):
        status = status_of(client, tid, rid)
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.02)
    assert seen == ["pending", "running", "success"]

    assert client.runs.join(tid, rid) == {"answer": 42}
    done = client.runs.get(tid, rid)
    assert ts(done["updated_at"]) > ts(done["created_at"])
    thread = client.threads.get(tid)
    assert thread["status"] == "idle"
    assert thread["values"] == {"answer": 42}
    assert thread["error"] is None and thread["interrupts"] == {}
    assert thread["metadata"] == {"k": "v", "graph_id": "agent", "assistant_id": AGENT_ID}


def test_input_drives_the_run_like_the_test_graph(client: Any) -> None:
    # tests/langgraph_server/graph.py: {"input": {...}} -> {"input": ..., "result": ...} [V]
    tid = client.threads.create()["thread_id"]
    out = client.runs.wait(tid, "agent", input={"input": {"x": 1}})
    assert out == {"input": {"x": 1}, "result": {"x": 1}}
    # the state accumulates: a failing run keeps the previous "result" [V]
    failed = client.runs.wait(tid, "agent", input={"input": {"fail": "boom"}}, raise_error=False)
    assert failed == {"__error__": {"error": "RuntimeError", "message": "boom"}}
    thread = client.threads.get(tid)
    assert thread["status"] == "error"
    assert thread["values"] == {"input": {"fail": "boom"}, "result": {"x": 1}}
    assert thread["error"] == {"error": "RuntimeError", "message": "boom"}
    with pytest.raises(Exception, match="RuntimeError: again"):
        client.runs.wait(tid, "agent", input={"input": {"fail": "again"}})


def test_top_level_directives_and_plain_inputs(emu: LangGraphEmulator, client: Any) -> None:
    # the emulator also reads {"sleep": s, "fail": msg} at the top level of the input
    tid = client.threads.create()["thread_id"]
    started = time.monotonic()
    out = client.runs.wait(tid, "agent", input={"sleep": 0.3, "fail": "late"}, raise_error=False)
    assert time.monotonic() - started >= 0.3
    assert out == {"__error__": {"error": "RuntimeError", "message": "late"}}
    # any other input: the queued/default script, and values = input + "result": "ok"
    emu.script(Script([("running", 0.05)]))
    assert client.runs.wait(tid, "agent", input={"x": 1}) == {
        "sleep": 0.3,
        "fail": "late",
        "x": 1,
        "result": "ok",
    }
    assert client.runs.wait(tid, "agent", input="text")["input"] == "text"


def test_error_run_join_gives_error(emu: LangGraphEmulator, client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    emu.script(Script([("running", 0.2)], final="error", message="boom value"))
    rid = client.runs.create(tid, "agent")["run_id"]
    # a join issued during the run blocks until it ends; HTTP 200 with __error__ [V]
    assert client.runs.join(tid, rid) == {
        "__error__": {"error": "ValueError", "message": "boom value"}
    }
    assert status_of(client, tid, rid) == "error"
    # repeated joins after the end still return it (the thread fallback) [V]
    assert client.runs.join(tid, rid) == {
        "__error__": {"error": "ValueError", "message": "boom value"}
    }
    assert client.threads.get(tid)["error"] == {"error": "ValueError", "message": "boom value"}


def test_timeout_run(emu: LangGraphEmulator, client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    emu.script(Script([("running", 0.1)], final="timeout"))
    rid = client.runs.create(tid, "agent", input={"k": 3})["run_id"]
    # a live join gets the last values, no __error__ (doc §4.1) [V]
    assert client.runs.join(tid, rid) == {"k": 3}
    assert status_of(client, tid, rid) == "timeout"
    thread = client.threads.get(tid)
    assert thread["status"] == "error"
    assert thread["error"] == {"error": "TimeoutError", "message": ""}


def test_list_runs_newest_first(emu: LangGraphEmulator, client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    emu.script(*[Script([("running", 0.05)]) for _ in range(3)])
    rids = [client.runs.create(tid, "agent", input={"n": n})["run_id"] for n in range(3)]
    listed = client.runs.list(tid)
    assert [r["run_id"] for r in listed] == rids[::-1]  # created_at descending
    assert [r["run_id"] for r in client.runs.list(tid, limit=1, offset=1)] == [rids[1]]
    assert client.runs.list(tid, select=["run_id", "status"])[0].keys() == {"run_id", "status"}
    client.runs.join(tid, rids[-1])
    assert len(client.runs.list(tid, status="success")) == 3
    assert client.runs.list(tid, status="bogus") == []  # not a 422 [V]
    with pytest.raises(NotFoundError) as unknown:
        client.runs.list(str(uuid.uuid4()))
    assert unknown.value.message.startswith("Thread with ID ")


def test_not_found_messages(client: Any, emu: LangGraphEmulator) -> None:
    tid = client.threads.create()["thread_id"]
    # unknown run on a known thread: NotFoundError.message == "Not Found" [V]
    with pytest.raises(NotFoundError) as run_missing:
        client.runs.get(tid, str(uuid.uuid4()))
    assert run_missing.value.message == "Not Found"
    assert run_missing.value.response.status_code == 404
    other = str(uuid.uuid4())
    with pytest.raises(NotFoundError) as thread_missing:
        client.runs.get(other, str(uuid.uuid4()))
    assert thread_missing.value.message == f"Thread with ID {other} not found"  # [V]
    with pytest.raises(UnprocessableEntityError) as bad_run:
        client.runs.get(tid, "zzz")
    assert bad_run.value.message == "Invalid run ID: must be a UUID"  # [V]
    # join of an unknown run: a real 404 like the hosted server (the in-memory server answers
    # 200 {"__error__": ...}, doc §5); the SDK raises the plain httpx error on that path
    with pytest.raises(httpx.HTTPStatusError) as join_missing:
        client.runs.join(tid, str(uuid.uuid4()))
    assert join_missing.value.response.status_code == 404
    # creating a run on a missing thread (if_not_exists defaults to reject) [V]
    with pytest.raises(NotFoundError) as no_thread:
        client.runs.create(other, "agent")
    assert no_thread.value.message == "Thread or assistant not found."
    with pytest.raises(NotFoundError):
        client.runs.create(tid, str(uuid.uuid4()))  # an unknown assistant UUID
    with pytest.raises(UnprocessableEntityError) as bad_graph:
        client.runs.create(tid, "nope")
    assert bad_graph.value.message == (
        "Invalid assistant: 'nope'. Must be either:\n- A valid assistant UUID, or\n"
        "- One of the registered graphs: agent"
    )
    with pytest.raises(UnprocessableEntityError) as bad_strategy:
        client.runs.create(tid, "agent", multitask_strategy="nope")
    assert bad_strategy.value.message.startswith(
        '"nope" is not one of "reject", "rollback" or 2 other candidates\n\n'
    )
    assert not emu.launches  # nothing above was accepted


def test_if_not_exists_create(client: Any) -> None:
    tid = str(uuid.uuid4())
    run = client.runs.create(
        tid, "agent", if_not_exists="create", input={"input": {"a": 1}}, metadata={"m": 1}
    )
    assert run["thread_id"] == tid  # created with the path's id [V]
    assert client.runs.join(tid, run["run_id"]) == {"input": {"a": 1}, "result": {"a": 1}}
    assert client.threads.get(tid)["metadata"] == {
        "graph_id": "agent",
        "assistant_id": AGENT_ID,
        "m": 1,
    }


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_interrupt(emu: LangGraphEmulator, client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    rid = client.runs.create(tid, "agent", input={"input": {"sleep": 30}})["run_id"]
    wait_for(lambda: status_of(client, tid, rid) == "running")
    before = client.runs.get(tid, rid)["updated_at"]
    # 202 with an empty body: the SDK returns None [V]
    assert client.runs.cancel(tid, rid) is None
    assert emu.cancels == [rid]
    cancelled = client.runs.get(tid, rid)
    assert cancelled["status"] == "interrupted"  # immediately [V]
    assert ts(cancelled["updated_at"]) > ts(before)
    # the real worker writes the thread a moment later; the emulator at once
    wait_for(lambda: client.threads.get(tid)["status"] == "interrupted")
    thread = client.threads.get(tid)
    assert thread["error"] == {
        "error": "UserInterrupt",
        "message": "interrupt requested via POST /threads/{thread_id}/runs/{run_id}/cancel",
    }
    # join gives the thread values at the time of cancel [V]
    assert client.runs.join(tid, rid) == {"input": {"sleep": 30}}
    with pytest.raises(NotFoundError) as terminal:
        client.runs.cancel(tid, rid)
    assert terminal.value.message == TERMINAL  # [V]
    with pytest.raises(NotFoundError) as unknown:
        client.runs.cancel(tid, str(uuid.uuid4()))
    assert unknown.value.message == "No runs found to cancel."  # [V]


def test_cancel_pending_join_is_empty(client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    first = client.runs.create(tid, "agent", input={"input": {"sleep": 30}})["run_id"]
    second = client.runs.create(tid, "agent", input={"input": {"x": 1}})["run_id"]  # enqueued
    assert status_of(client, tid, second) == "pending"
    client.runs.cancel(tid, second)
    assert status_of(client, tid, second) == "interrupted"
    assert client.runs.join(tid, second) == {}  # cancelled while pending [V]
    client.runs.cancel(tid, first)


def test_cancel_wait_and_rollback(client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    rid = client.runs.create(tid, "agent", input={"input": {"sleep": 30}})["run_id"]
    wait_for(lambda: status_of(client, tid, rid) == "running")
    # wait=true: 200 JSON, a join-style body without the thread fallback, so {} [V]
    assert client.runs.cancel(tid, rid, wait=True) == {}
    assert status_of(client, tid, rid) == "interrupted"

    rid = client.runs.create(tid, "agent", input={"input": {"sleep": 30}})["run_id"]
    client.runs.cancel(tid, rid, action="rollback")
    with pytest.raises(NotFoundError) as gone:  # the run is deleted [V]
        client.runs.get(tid, rid)
    assert gone.value.message == "Not Found"
    assert rid not in [r["run_id"] for r in client.runs.list(tid)]


# -- multitask strategies ------------------------------------------------------------------------


def test_reject_conflict(emu: LangGraphEmulator, client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    first = client.runs.create(tid, "agent", input={"input": {"sleep": 0.5}})["run_id"]
    with pytest.raises(ConflictError) as conflict:
        client.runs.create(tid, "agent", multitask_strategy="reject")
    assert conflict.value.message == REJECT  # [V]
    assert conflict.value.response.status_code == 409
    assert len(client.runs.list(tid)) == 1  # nothing was created [V]
    assert len(emu.launches) == 1
    client.runs.join(tid, first)
    # reject only looks at in-flight runs
    second = client.runs.create(tid, "agent", multitask_strategy="reject")
    assert second["multitask_strategy"] == "reject"


def test_enqueue_waits_for_the_previous_run(client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    first = client.runs.create(tid, "agent", input={"input": {"sleep": 0.4}})["run_id"]
    second = client.runs.create(tid, "agent", input={"input": {"n": 2}})["run_id"]
    wait_for(lambda: status_of(client, tid, first) == "running")
    assert status_of(client, tid, second) == "pending"
    assert client.runs.join(tid, second) == {"input": {"n": 2}, "result": {"n": 2}}
    assert status_of(client, tid, first) == "success"
    one = client.runs.get(tid, first)
    two = client.runs.get(tid, second)
    assert ts(two["updated_at"]) > ts(one["updated_at"])


def test_interrupt_and_rollback_strategies(client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    slow = {"input": {"sleep": 30}}
    first = client.runs.create(tid, "agent", input=slow)["run_id"]
    wait_for(lambda: status_of(client, tid, first) == "running")
    second = client.runs.create(tid, "agent", input=slow, multitask_strategy="interrupt")
    assert status_of(client, tid, first) == "interrupted"  # [V]
    wait_for(lambda: status_of(client, tid, second["run_id"]) == "running")
    third = client.runs.create(
        tid, "agent", input={"input": {"z": 3}}, multitask_strategy="rollback"
    )
    with pytest.raises(NotFoundError):  # the superseded run is deleted [V]
        client.runs.get(tid, second["run_id"])
    assert client.runs.join(tid, third["run_id"]) == {"input": {"z": 3}, "result": {"z": 3}}


# -- stateless runs ------------------------------------------------------------------------------


def test_stateless_run_is_deleted_after_it_ends(emu: LangGraphEmulator, client: Any) -> None:
    emu.script(Script([("pending", 0.1), ("running", 0.3)], outputs={"done": True}))
    created: list[Any] = []
    run = client.runs.create(None, "agent", input={"a": 1}, on_run_created=created.append)
    tid, rid = run["thread_id"], run["run_id"]
    assert run["kwargs"]["temporary"] is True  # [V]
    assert (
        created[0]["run_id"] == rid and created[0]["thread_id"] is None
    )  # no thread in the header
    assert status_of(client, tid, rid) in ("pending", "running")
    assert client.runs.join(tid, rid) == {"done": True}  # a join during the run gets it [V]
    with pytest.raises(NotFoundError) as gone:  # then the thread is gone [V]
        client.runs.get(tid, rid)
    assert gone.value.message == f"Thread with ID {tid} not found"


def test_stateless_keep_and_wait(client: Any) -> None:
    run = client.runs.create(None, "agent", input={"input": {"k": 1}}, on_completion="keep")
    assert run["kwargs"]["temporary"] is False
    assert client.runs.join(run["thread_id"], run["run_id"]) == {
        "input": {"k": 1},
        "result": {"k": 1},
    }
    assert status_of(client, run["thread_id"], run["run_id"]) == "success"  # [V]
    assert client.runs.wait(None, "agent", input={"input": {"q": 1}}) == {
        "input": {"q": 1},
        "result": {"q": 1},
    }


# -- join heartbeat --------------------------------------------------------------------------


def test_join_heartbeat_before_the_body(emu: LangGraphEmulator, client: Any) -> None:
    tid = client.threads.create()["thread_id"]
    emu.script(Script([("running", 0.7)], outputs={"out": "done"}))
    rid = client.runs.create(tid, "agent")["run_id"]
    response = httpx.get(
        f"{emu.base_url}/threads/{tid}/runs/{rid}/join",
        headers={"x-api-key": TOKEN},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["location"] == f"/threads/{tid}/runs/{rid}/join"
    assert response.headers["content-location"] == f"/threads/{tid}/runs/{rid}"
    # keep-alive newlines, then the JSON: '\n{"out":"done"}' [V]
    assert response.text.startswith("\n\n")
    assert response.text.strip() == '{"out":"done"}'
    # and the SDK parses it
    assert client.runs.join(tid, rid) == {"out": "done"}


def test_create_response_headers(emu: LangGraphEmulator) -> None:
    headers = {"x-api-key": TOKEN}
    with httpx.Client(base_url=emu.base_url, headers=headers) as http:
        tid = http.post("/threads", json={}).json()["thread_id"]
        stateful = http.post(f"/threads/{tid}/runs", json={"assistant_id": "agent"})
        rid = stateful.json()["run_id"]
        assert stateful.headers["content-location"] == f"/threads/{tid}/runs/{rid}"  # [V]
        stateless = http.post("/runs", json={"assistant_id": "agent"})
        assert stateless.headers["content-location"] == f"/runs/{stateless.json()['run_id']}"
        empty = http.post(f"/threads/{tid}/runs/{rid}/cancel")
        assert (empty.status_code, empty.content) == (202, b"")
        assert "content-type" not in empty.headers
        assert http.delete(f"/threads/{tid}/runs/{rid}").status_code == 204
        assert http.get("/nope").json() == {"detail": "Not Found"}  # [V]
        assert http.put("/threads").json() == {"detail": "Method Not Allowed"}  # [V]
        invalid = http.post(f"/threads/{tid}/runs", content=b"")
        assert invalid.json() == {"detail": "Invalid JSON in request body"}  # [V]


# -- the async client ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client(emu: LangGraphEmulator) -> None:
    client: Any = get_client(url=emu.base_url, api_key=TOKEN)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "agent", input={"input": {"sleep": 0.2}})
    assert (await client.runs.get(tid, run["run_id"]))["status"] in ("pending", "running")
    assert await client.runs.join(tid, run["run_id"]) == {
        "input": {"sleep": 0.2},
        "result": {"sleep": 0.2},
    }
    assert [r["run_id"] for r in await client.runs.list(tid)] == [run["run_id"]]
    slow = await client.runs.create(tid, "agent", input={"input": {"sleep": 30}})
    with pytest.raises(ConflictError):
        await client.runs.create(tid, "agent", multitask_strategy="reject")
    assert await client.runs.cancel(tid, slow["run_id"]) is None
    assert (await client.runs.get(tid, slow["run_id"]))["status"] == "interrupted"
    with pytest.raises(NotFoundError) as missing:
        await client.runs.get(tid, str(uuid.uuid4()))
    assert missing.value.message == "Not Found"
    await client.aclose()
