"""``langgraph``: LangGraph Platform / LangSmith Deployment (the Agent Server REST API).

Facts and their sources are in docs/platforms/langgraph.md. In short:

* A run lives on a thread: ``GET /threads/{thread_id}/runs/{run_id}``. There is no way to
  read a run without its thread, so a :class:`RunRef` carries ``thread_id`` in its scope.
* Launch modes (``params``): on a given thread (``thread_id``), on a new thread (the default;
  runbridge creates it with an id of its own), or stateless (``stateless: True``, ``POST /runs``
  with ``on_completion: "keep"``, since with "delete" the outcome can never be read).
  Other params (``input``, ``config``, ``context``, ``metadata``, ``multitask_strategy``,
  ``webhook``, ``interrupt_before``...) go to the server as they are.
* Idempotent launch: one launch, one dedicated thread whose id is ``uuid5(key)``, created with
  ``if_exists: "do_nothing"``; the run carries ``metadata.runbridge_key`` and is created with
  ``multitask_strategy: "reject"``, so a duplicate POST gets 409. ``find`` lists the thread's
  runs and takes the earliest with that key. The server ignores a caller-chosen run id.
* Status strings: pending, running, success, error, timeout, interrupted. The run object has
  no error or result field: for a terminal run the provider reads the thread
  (``GET /threads/{id}``) for its values or its ``error`` ``{error, message}``.
* ``join`` blocks until the run ends (sending ``\\n`` heartbeats) and answers the thread's
  values, not the run, so after it the provider reads the run's status.
* Cancel: ``POST .../cancel?action=interrupt&wait=false`` → 202; the run becomes
  ``interrupted``. A 404 for a run that already ended is not an error.
* Auth: ``x-api-key``; failures are 403 (401 only from custom auth handlers).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError, ProtocolError, RunNotFound
from ..http import Exchange, Request, Response
from ..models import LaunchSpec, RunRef, RunStatus, parse_time
from ..states import RunState
from ._parse import excerpt, ident, mapping, text, unreadable_launch
from .base import Provider

__all__ = ["STATES", "LangGraph"]

STATES: dict[str, RunState] = {
    "pending": RunState.PENDING,
    "running": RunState.RUNNING,
    "success": RunState.SUCCEEDED,
    "error": RunState.FAILED,
    "timeout": RunState.TIMED_OUT,
    "interrupted": RunState.CANCELLED,
}
"""Run statuses of the Agent Server. ``success`` includes a run paused by a human-in-the-loop
``interrupt()`` (the thread is then ``interrupted``; see ``outputs["interrupts"]``);
``interrupted`` on the run itself always means cancelled or superseded."""

MULTITASK_STRATEGIES = frozenset({"reject", "interrupt", "rollback", "enqueue"})
KEY_NAMESPACE = uuid.UUID("5d0b6a4e-3f0c-5c1e-9a57-7c2b8f1e0a11")
"""uuid5 namespace for thread ids derived from idempotency keys."""
METADATA_KEY = "runbridge_key"


def thread_for_key(key: str) -> str:
    """The dedicated thread id of a keyed launch."""
    return str(uuid.uuid5(KEY_NAMESPACE, key))


def _segment(value: str) -> str:
    """An id as one URL path segment (a ``/`` or ``?`` in it cannot change the path)."""
    return quote(value, safe="")


STUDIO_THREAD_URL = "https://smith.langchain.com/studio/thread/{thread_id}?baseUrl={base_url}"
"""The default run page: the run's thread in LangSmith Studio, which the browser connects to the
deployment at ``baseUrl`` (the form LangChain's own agent-inbox builds, and ``langgraph dev``
prints as ``https://smith.langchain.com/studio/?baseUrl=...``; see docs/platforms/langgraph.md).
A LangSmith deployment page needs the organization and deployment ids, which the API URL does
not give."""


class LangGraph(Provider):
    """LangGraph Agent Server. Options: ``assistant_id`` (default for launches, a graph name or
    assistant UUID), ``run_url`` (a template with ``{thread_id}``, ``{run_id}``,
    ``{assistant_id}`` and ``{base_url}`` (the client's base URL, URL-quoted) for the run's page;
    default :data:`STUDIO_THREAD_URL`, the run's thread in LangSmith Studio; ``""``: no URL),
    ``read_thread`` (read the thread for a terminal run's values or error; default True)."""

    name = "langgraph"
    states = STATES
    ref_scope = ("thread_id",)
    supports_find = True
    auto_key = True

    def __init__(
        self,
        *,
        assistant_id: str | None = None,
        run_url: str | None = None,
        read_thread: bool = True,
    ) -> None:
        if assistant_id is not None and (not isinstance(assistant_id, str) or not assistant_id):
            raise ConfigError("langgraph: assistant_id must be a non-empty string")
        if run_url is not None:
            try:
                run_url.format(thread_id="t", run_id="r", assistant_id="a", base_url="b")
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise ConfigError(
                    f"langgraph: run_url {run_url!r} is not a valid template "
                    f"(use {{thread_id}}, {{run_id}}, {{assistant_id}}, {{base_url}}): {exc}"
                ) from None
        self.assistant_id = assistant_id
        self.run_url = STUDIO_THREAD_URL if run_url is None else run_url
        self.read_thread = read_thread

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"x-api-key": token}

    # -- launch ------------------------------------------------------------------------------
    def _body(self, spec: LaunchSpec) -> tuple[dict[str, Any], str | None, bool]:
        """(run body, thread id or None, stateless?) from the launch params, validated."""
        params = dict(spec.params)
        stateless = bool(params.pop("stateless", False))
        thread_id = params.pop("thread_id", None)
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise ConfigError("langgraph: params['thread_id'] must be a thread id string")
        assistant_id = params.pop("assistant_id", None) or self.assistant_id
        if not assistant_id:
            raise ConfigError(
                "langgraph: launch needs params['assistant_id'] (a graph name such as 'agent', "
                "or an assistant UUID), or the assistant_id option"
            )
        strategy = params.get("multitask_strategy")
        if strategy is not None and strategy not in MULTITASK_STRATEGIES:
            raise ConfigError(
                f"langgraph: multitask_strategy {strategy!r} is not one of "
                f"{', '.join(sorted(MULTITASK_STRATEGIES))}"
            )
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise ConfigError("langgraph: params['metadata'] must be a mapping")
        body: dict[str, Any] = {"assistant_id": assistant_id, **params}
        if spec.key:
            body["metadata"] = {**metadata, METADATA_KEY: spec.key}
        if stateless:
            if thread_id is not None:
                raise ConfigError("langgraph: a stateless run cannot name a thread_id")
            if body.get("on_completion", "keep") != "keep":
                raise ConfigError(
                    "langgraph: a stateless run with on_completion='delete' cannot be waited "
                    "for: the server deletes it before its outcome can be read; use 'keep'"
                )
            body["on_completion"] = "keep"
        return body, thread_id, stateless

    def can_find(self, spec: LaunchSpec) -> bool:
        return not spec.params.get("stateless")

    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        body, thread_id, stateless = self._body(spec)
        if stateless:
            response = yield Request("POST", "/runs", json=body)
            return self._launched(response, None)
        if thread_id is None:
            thread_id = thread_for_key(spec.key) if spec.key else self.new_id()
            thread: dict[str, Any] = {"thread_id": thread_id, "if_exists": "do_nothing"}
            if spec.key:
                thread["metadata"] = {METADATA_KEY: spec.key}
            # Safe to resend: the id is ours and an existing thread is left as it is. An answer
            # that cannot be read proves nothing (a ProtocolError: the launch flow looks the
            # key up, then sends it again).
            created: Response = yield Request("POST", "/threads", json=thread, retry=True)
            self.decipher(created)
            body.setdefault("multitask_strategy", "reject")
        response = yield Request("POST", f"/threads/{_segment(thread_id)}/runs", json=body)
        return self._launched(response, thread_id)

    def _launched(self, response: Response, thread_id: str | None) -> RunRef:
        """The run a launch answer reports. A run on a thread of ours keeps that thread when
        the answer does not name it; an answer with no readable run id is a ProtocolError."""
        if not response.ok:
            raise self.error_for(response)
        try:
            run = mapping(response.json())
        except ProtocolError:
            run = mapping(None)
        run_id = ident(run.get("run_id"))
        thread = ident(run.get("thread_id")) or thread_id
        if run_id is None or thread is None:
            raise unreadable_launch(
                self.name, "is not a run object with run_id and thread_id", response, run_id=run_id
            )
        return RunRef(self.name, run_id, {"thread_id": thread})

    def find(self, spec: LaunchSpec) -> Exchange[RunRef | None]:
        assert spec.key is not None
        thread_id = spec.params.get("thread_id") or thread_for_key(spec.key)
        if not isinstance(thread_id, str):
            raise ConfigError("langgraph: params['thread_id'] must be a thread id string")
        response = yield Request(
            "GET", f"/threads/{_segment(thread_id)}/runs", params={"limit": 100}
        )
        if response.status_code == 404:
            return None
        runs = self.decipher(response)
        if not isinstance(runs, list):
            raise ProtocolError(
                f"langgraph: listing a thread's runs did not answer a list: {excerpt(runs)}"
            )
        mine = [
            run
            for run in runs
            if isinstance(run, Mapping)
            and mapping(run.get("metadata")).get(METADATA_KEY) == spec.key
            and ident(run.get("run_id"))
        ]
        if not mine:
            return None
        first = min(
            mine,
            key=lambda run: (text(run.get("created_at")) or "", str(ident(run.get("run_id")))),
        )
        run_id = ident(first.get("run_id"))
        assert run_id is not None  # (filtered above)
        return RunRef(self.name, run_id, {"thread_id": ident(first.get("thread_id")) or thread_id})

    # -- status ------------------------------------------------------------------------------
    def _run_path(self, ref: RunRef) -> str:
        return f"/threads/{_segment(ref.scope['thread_id'])}/runs/{_segment(ref.id)}"

    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        response: Response = yield Request("GET", self._run_path(ref))
        run = self.decipher(response)
        if not isinstance(run, Mapping) or not isinstance(run.get("status"), str):
            raise ProtocolError(
                f"langgraph: expected a run object with a status, got {excerpt(response)}"
            )
        state = self.map_state(run["status"])
        thread: Any = None
        if state.is_terminal and self.read_thread:
            response = yield Request("GET", f"/threads/{_segment(ref.scope['thread_id'])}")
            if response.ok:
                thread = self.decipher(response)
        return self.parse_status(ref, run, thread)

    def parse_status(self, ref: RunRef, run: Mapping[str, Any], thread: Any = None) -> RunStatus:
        raw = str(run.get("status"))
        state = self.map_state(raw)
        message: str | None = None
        outputs: dict[str, Any] = {}
        if isinstance(thread, Mapping):
            error = thread.get("error")
            if state in (RunState.FAILED, RunState.TIMED_OUT, RunState.CANCELLED) and error:
                message = self._error_text(error)
            if state is RunState.SUCCEEDED:
                outputs["values"] = thread.get("values")
                interrupts = thread.get("interrupts")
                if thread.get("status") == "interrupted" and interrupts:
                    outputs["interrupts"] = interrupts
                    message = "paused by an interrupt: awaiting human input"
        updated = parse_time(run.get("updated_at"))
        url = None
        uses_base = "{base_url}" in self.run_url
        if self.run_url and (self.base_url or not uses_base):
            url = self.run_url.format(
                thread_id=_segment(ref.scope.get("thread_id", "")),
                run_id=_segment(ref.id),
                assistant_id=_segment(ident(run.get("assistant_id")) or ""),
                base_url=quote(self.base_url or "", safe=""),
            )
        return RunStatus(
            ref=ref,
            state=state,
            raw_state=raw,
            url=url,
            message=message,
            outputs=outputs,
            created_at=parse_time(run.get("created_at")),
            updated_at=updated,
            ended_at=updated if state.is_terminal else None,
        )

    @staticmethod
    def _error_text(error: Any) -> str:
        if isinstance(error, Mapping):
            kind, text = error.get("error"), error.get("message")
            if kind and text:
                return f"{kind}: {text}"
            return str(text or kind or error)
        return str(error)

    # -- join and cancel -----------------------------------------------------------------------
    def join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus] | None:
        return self._join(ref, timeout)

    def _join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus]:
        response = yield Request(
            "GET", self._run_path(ref) + "/join", timeout=timeout, long_poll=True, retry=False
        )
        body = self.decipher(response)
        # The in-memory server answers an unknown run with 200 and an __error__ body.
        error = body.get("__error__") if isinstance(body, Mapping) else None
        if isinstance(error, Mapping) and "404" in str(error.get("message", "")):
            raise RunNotFound(
                self._error_text(error),
                platform=self.name,
                status_code=404,
                body=response.text[:500],
            )
        return (yield from self.status(ref))

    def cancel(self, ref: RunRef) -> Exchange[None]:
        response: Response = yield Request(
            "POST",
            self._run_path(ref) + "/cancel",
            params={"action": "interrupt", "wait": False},
            retry=True,  # cancelling twice is harmless
        )
        if response.status_code == 404:
            # "No matching runs to cancel": the run may just have ended. Is it there?
            check = yield Request("GET", self._run_path(ref))
            if check.ok:
                return None
        self.decipher(response)
        return None
