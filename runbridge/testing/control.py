"""A small synchronous client of the emulators' control API (``/_runbridge/``).

Script an emulator that runs in another process (``runbridge emulate``, a deployment's tests),
inject faults and read what it was asked::

    control = EmulatorControl("http://127.0.0.1:8123")
    control.reset()
    control.script({"steps": [["running", 1.0]], "final": "failed", "message": "boom"})
    control.inject(kind="status", status=503, times=2, on="status")
    ...  # run your DAG, flow or job against the emulator
    control.wait_for_launches(1, timeout=30)
    assert control.record()["cancels"] == 0

Scripts are dicts with the fields of :class:`~runbridge.testing.Script` (or ``Script``
objects); their states may be the platform's raw states or the generic words ``queued``,
``running``, ``success``, ``failed``, ``cancelled``, ``unknown``. Faults are the fields of
:class:`~runbridge.testing.Fault`, with ``on="launch"|"status"|"cancel"`` for the platform's
request of that kind. A refused call raises :class:`ControlRefused` with the server's reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ..core.errors import RunbridgeError
from ._control import PREFIX
from ._emulator import Script

__all__ = ["ControlRefused", "EmulatorControl"]

T = TypeVar("T")


class ControlRefused(RunbridgeError):
    """The control API refused a call (bad script or fault, unknown run, a run that ended)."""

    def __init__(self, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def _script_json(script: Script | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(script, Script):
        return {
            "steps": [[raw, seconds] for raw, seconds in script.steps],
            "final": script.final,
            "message": script.message,
            "outputs": dict(script.outputs) if script.outputs is not None else None,
            "error_type": script.error_type,
        }
    return dict(script)


class EmulatorControl:
    """The control API of the emulator at ``base_url`` (the emulator's own URL)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + PREFIX.rstrip("/"), timeout=timeout)

    def __repr__(self) -> str:
        return f"EmulatorControl({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self._http.request(method, path, json=body)
        try:
            answer = response.json()
        except ValueError:
            answer = {"detail": response.text[:200]}
        if response.status_code >= 400:
            detail = answer.get("detail") if isinstance(answer, dict) else None
            raise ControlRefused(
                f"emulator control {method} {path}: {detail or response.status_code}",
                status=response.status_code,
                field=answer.get("field") if isinstance(answer, dict) else None,
            )
        return answer if isinstance(answer, dict) else {"answer": answer}

    def script(
        self,
        *scripts: Script | Mapping[str, Any],
        default: Script | Mapping[str, Any] | None = None,
    ) -> None:
        """Queue scripts for the next launches, in order; ``default`` for launches after them."""
        body: dict[str, Any] = {"scripts": [_script_json(s) for s in scripts]}
        if default is not None:
            body["default"] = _script_json(default)
        self._call("POST", "/scripts", body)

    def inject(self, **fault: Any) -> None:
        """Add a fault: ``inject(kind="drop", when="after", on="launch")``."""
        self._call("POST", "/faults", {"faults": [fault]})

    def inject_all(self, *faults: Mapping[str, Any]) -> None:
        self._call("POST", "/faults", {"faults": [dict(f) for f in faults]})

    def clear_faults(self) -> None:
        self._call("POST", "/faults", {"clear": True})

    def record(self) -> dict[str, Any]:
        """``{"runs": [...], "launches", "cancels", "user_cancels", "faults_met", "requests",
        ...}`` (see docs/testing.md)."""
        return self._call("GET", "/record")

    def cancel_run(self, run_id: str) -> None:
        """Cancel a run as a user of the platform would (not counted in ``cancels``)."""
        self._call("POST", f"/runs/{quote(run_id, safe='/')}/cancel")

    def reset(self) -> None:
        """Forget runs, scripts, faults and requests (the emulator's startup default stays)."""
        self._call("POST", "/reset")

    # -- waiting ---------------------------------------------------------------------------------
    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], T | None],
        timeout: float,
        *,
        interval: float = 0.1,
        what: str = "the condition",
    ) -> T:
        """Poll the record until ``predicate(record)`` is truthy; return its value. Raises
        ``TimeoutError`` naming ``what`` and the last record's counts after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.record()
            value = predicate(record)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"emulator: {what} not seen within {timeout:g} s (launches "
                    f"{record['launches']}, cancels {record['cancels']}, runs "
                    f"{[(r['id'], r['state']) for r in record['runs']]})"
                )
            time.sleep(interval)

    def wait_for_launches(self, n: int, timeout: float) -> dict[str, Any]:
        """Wait until at least ``n`` runs were launched; the record then."""
        return self.wait_for(
            lambda r: r if r["launches"] >= n and len(r["runs"]) >= n else None,
            timeout,
            what=f"{n} launch(es)",
        )

    def wait_for_run(self, timeout: float, *, index: int = -1) -> dict[str, Any]:
        """The record's run at ``index`` (newest by default), once there is one."""
        record = self.wait_for(lambda r: r if r["runs"] else None, timeout, what="a run")
        runs: list[dict[str, Any]] = sorted(record["runs"], key=lambda r: r["started"])
        return runs[index]

    def wait_for_state(
        self,
        run_id: str | None,
        timeout: float,
        *,
        states: tuple[str, ...] = (),
        finished: bool | None = None,
    ) -> dict[str, Any]:
        """Wait until the run (``None``: the newest) is in one of ``states`` (raw states, or the
        generic words of the control API: ``running`` is Flyte's ``ACTION_PHASE_RUNNING``)
        and/or ``finished`` is as given; the run's entry of the record then."""

        def match(record: dict[str, Any]) -> dict[str, Any] | None:
            runs = sorted(record["runs"], key=lambda r: r["started"])
            if run_id is not None:
                runs = [r for r in runs if r["id"] == run_id or r["key"] == run_id]
            if not runs:
                return None
            run: dict[str, Any] = runs[-1]
            if states and run["state"] not in states and run.get("word") not in states:
                return None
            if finished is not None and run["finished"] != finished:
                return None
            return run

        what = f"run {run_id or '(newest)'} in {states or 'any state'} finished={finished}"
        return self.wait_for(match, timeout, what=what)

    def wait_for_cancels(self, n: int, timeout: float) -> dict[str, Any]:
        """Wait until at least ``n`` cancel requests took effect; the record then."""
        return self.wait_for(
            lambda r: r if r["cancels"] >= n else None, timeout, what=f"{n} cancel(s)"
        )
