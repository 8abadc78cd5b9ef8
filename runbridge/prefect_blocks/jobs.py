"""``ExternalRunJob(JobBlock)`` and ``ExternalRun(JobRun)``: Prefect's job abstraction over
runbridge, the way prefect-dbt's ``DbtCloudJob`` / ``DbtCloudJobRun`` are, minus their
weak points: one shared client instead of one per status check, success decided by runbridge
(``RunStatus.succeeded``) instead of compared state codes, a wait that cancels the run when
the flow is cancelled or times out, and no ``@sync_compatible``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from prefect.blocks.abstract import JobBlock, JobRun
from pydantic import ConfigDict, Field, field_validator, model_validator

from ..core.errors import ConfigError
from ..core.models import RunRef, RunStatus
from ..core.schedule import PollSchedule
from ..core.states import parse_states
from . import _ops
from ._bridge import async_dispatch, run_sync
from .credentials import DOCS_URL, RunbridgeCredentials

__all__ = ["ExternalRun", "ExternalRunJob"]


class ExternalRunJob(JobBlock):
    """A run to launch on an external platform, and how to wait for it: launch parameters,
    wait and run timeouts, poll schedule and which end states count as success.

    `trigger()` launches the run (inside a task run, a retry of that task re-attaches to it
    instead of launching a duplicate) and returns an `ExternalRun`; its
    `wait_for_completion()` returns the final `RunStatus` and `fetch_result()` raises
    `RunFailed` with the platform's message unless the run succeeded. In async flows, await the
    same methods (or their `a`-prefixed forms: `atrigger`, `await_for_completion`...).

    Examples:
        Launch a run from a flow and wait for its result:
        ```python
        from prefect import flow
        from runbridge.prefect_blocks import ExternalRunJob, RunbridgeCredentials

        @flow
        def nightly_agent():
            job = ExternalRunJob(
                credentials=RunbridgeCredentials.load("agents"),
                params={"assistant_id": "agent", "input": {"topic": "nightly"}},
                wait_timeout=3600,
            )
            run = job.trigger()
            run.wait_for_completion()
            return run.fetch_result().outputs
        ```

        Load a saved job block and run it from an async flow:
        ```python
        from prefect import flow
        from runbridge.prefect_blocks import ExternalRunJob

        @flow
        async def nightly_agent():
            job = await ExternalRunJob.aload("nightly-agent")
            run = await job.atrigger()
            return (await run.afetch_result()).outputs
        ```
    """

    # a validation error must not echo the input: the credentials in it hold the token
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name: ClassVar[str | None] = "Runbridge External Run Job"
    _block_type_slug: ClassVar[str | None] = "runbridge-external-run-job"
    _documentation_url: ClassVar[Any] = DOCS_URL
    _description: ClassVar[str | None] = (
        "A run to launch on an external platform through runbridge (an agent run, a workflow, "
        "a training job) and how to wait for it: parameters, timeouts, poll schedule, success "
        "states. Cancelling the flow run cancels the external run."
    )

    credentials: RunbridgeCredentials = Field(
        default=..., description="The platform connection to launch the run on."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        title="Launch parameters",
        description="What to launch, in the platform's terms (e.g. LangGraph's assistant_id "
        "and input); trigger(params) overrides keys of it.",
    )
    wait_timeout: float | None = Field(
        default=None,
        gt=0,
        title="Wait timeout (seconds)",
        description="Stop waiting after this long and fail with WaitTimeout; the run keeps going.",
    )
    run_timeout: float | None = Field(
        default=None,
        gt=0,
        title="Run timeout (seconds)",
        description="Cancel the run once it is this old; it then ends TIMED_OUT.",
    )
    poll_interval: float | None = Field(
        default=None,
        gt=0,
        title="First poll interval (seconds)",
        description="The first wait between status checks, where the platform has no "
        "blocking wait endpoint; later waits grow by poll_backoff up to poll_max_interval. "
        "Empty: the credentials' setting (as for the two fields below).",
    )
    poll_max_interval: float | None = Field(
        default=None,
        gt=0,
        title="Longest poll interval (seconds)",
        description="The longest wait between two status checks.",
    )
    poll_backoff: float | None = Field(
        default=None, ge=1, description="Each poll interval is this many times the previous one."
    )
    error_window: float | None = Field(
        default=None,
        ge=0,
        title="Error window (seconds)",
        description="How long the wait tolerates transient errors in a row (5xx, 429, network "
        "errors) before it fails with the last one. Empty: the credentials' setting.",
    )
    success: list[str] = Field(
        default_factory=lambda: ["SUCCEEDED"],
        title="Success states",
        description="End states that count as success: any of SUCCEEDED, PARTIAL, FAILED, "
        "CANCELLED, TIMED_OUT.",
    )
    cancel_on_kill: bool = Field(
        default=True,
        description="Cancel the run when the wait is stopped from outside: the flow run is "
        "cancelled, a task or flow timeout fires. (Never on a wait timeout.)",
    )
    relaunch_failed: bool = Field(
        default=False,
        description="When a task retry finds that the run it launched ended without success, "
        "launch a new one instead of taking that result again.",
    )
    create_artifacts: bool = Field(
        default=True,
        description="Create a link artifact to the run's page at launch and a markdown "
        "artifact with its final status.",
    )

    @field_validator("success")
    @classmethod
    def _terminal_states(cls, value: list[str]) -> list[str]:
        return sorted(state.value for state in parse_states(value))

    @model_validator(mode="after")
    def _poll_bounds(self) -> ExternalRunJob:
        self.poll_schedule()  # a ConfigError naming the field
        return self

    def poll_schedule(self) -> PollSchedule | None:
        """The job's poll schedule: its poll fields over the credentials' (None: theirs)."""
        fields = (self.poll_interval, self.poll_max_interval, self.poll_backoff)
        if all(value is None for value in fields):
            return None
        credentials = self.credentials
        first = credentials.poll_interval if self.poll_interval is None else self.poll_interval
        cap = (
            credentials.poll_max_interval
            if self.poll_max_interval is None
            else self.poll_max_interval
        )
        if cap < first:
            raise ConfigError(
                f"poll_max_interval ({cap}) must be >= poll_interval ({first}) "
                "(with the credentials' values for the fields left empty)"
            )
        factor = credentials.poll_backoff if self.poll_backoff is None else self.poll_backoff
        return PollSchedule(first=first, factor=factor, cap=cap)

    def wait_policy(self) -> _ops.WaitPolicy:
        """The wait options of this job, as runbridge's tasks take them."""
        return _ops.WaitPolicy(
            wait_timeout=self.wait_timeout,
            run_timeout=self.run_timeout,
            poll=self.poll_schedule(),
            error_window=self.error_window,
            success=parse_states(self.success),
            cancel_on_kill=self.cancel_on_kill,
            artifacts=self.create_artifacts,
        )

    async def atrigger(
        self, params: Mapping[str, Any] | None = None, *, key: str | None = None
    ) -> ExternalRun:
        """Launch the run (``params`` override the block's) and return its ``ExternalRun``.

        ``key``: the launch's identity; by default one is derived from the Prefect run (task
        run id, or flow run attempt), so a task retry re-attaches instead of launching again.
        """
        started = await _ops.launch(
            self.credentials,
            {**self.params, **(params or {})},
            key=key,
            relaunch_failed=self.relaunch_failed,
            success=parse_states(self.success),
            artifacts=self.create_artifacts,
            cancel_on_kill=self.cancel_on_kill,
        )
        return ExternalRun(self, started.ref, started.status)

    @async_dispatch(atrigger)
    def trigger(
        self, params: Mapping[str, Any] | None = None, *, key: str | None = None
    ) -> ExternalRun:
        """Launch the run and return its ``ExternalRun`` (awaitable in async flows)."""
        return run_sync(self.atrigger(params, key=key))

    def attach(self, ref: RunRef | Mapping[str, Any] | str) -> ExternalRun:
        """An ``ExternalRun`` for a run launched elsewhere (a ``RunRef``, its dict or string)."""
        return ExternalRun(self, RunRef.coerce(ref))


class ExternalRun(JobRun[RunStatus]):  # not a block
    """A run launched (or attached to) by an :class:`ExternalRunJob`.

    ``wait_for_completion()`` returns the final ``RunStatus``; ``fetch_result()`` returns it
    too, waiting first if needed, and raises ``RunFailed`` (with the platform's message) if
    the run did not succeed. Each has an ``a``-prefixed coroutine form for async code.
    """

    def __init__(self, job: ExternalRunJob, ref: RunRef, status: RunStatus | None = None):
        self.job = job
        self.ref = ref
        self.status: RunStatus | None = status
        """The last status seen."""

    def __repr__(self) -> str:
        state = self.status.state.value if self.status else "?"
        return f"<ExternalRun {self.ref.to_string()} {state}>"

    @property
    def url(self) -> str | None:
        """The run's page on the platform, once known."""
        return self.status.url if self.status else None

    async def await_for_completion(self) -> RunStatus:
        """Wait until the run ends and return its final status (a failed run is returned, not
        raised; ``WaitTimeout`` after the job's ``wait_timeout``)."""
        self.status = await _ops.wait(self.job.credentials, self.ref, self.job.wait_policy())
        return self.status

    @async_dispatch(await_for_completion)
    def wait_for_completion(self) -> RunStatus:
        """Wait until the run ends and return its final status (awaitable in async flows)."""
        return run_sync(self.await_for_completion())

    async def afetch_result(self) -> RunStatus:
        """The final status, waiting for the run first if it has not ended; raises ``RunFailed``
        with the platform's message unless it ended in one of the job's success states."""
        if self.status is None or not self.status.is_terminal:
            await self.await_for_completion()
        assert self.status is not None
        return self.status.raise_for_state(parse_states(self.job.success))

    @async_dispatch(afetch_result)
    def fetch_result(self) -> RunStatus:
        """The final status; raises ``RunFailed`` unless the run succeeded."""
        return run_sync(self.afetch_result())

    async def aget_status(self) -> RunStatus:
        """Check the run now."""
        self.status = await _ops.get(self.job.credentials, self.ref)
        return self.status

    @async_dispatch(aget_status)
    def get_status(self) -> RunStatus:
        """Check the run now."""
        return run_sync(self.aget_status())

    async def acancel(self) -> None:
        """Ask the platform to cancel the run."""
        await _ops.cancel(self.job.credentials, self.ref)

    @async_dispatch(acancel)
    def cancel(self) -> None:
        """Ask the platform to cancel the run."""
        run_sync(self.acancel())
