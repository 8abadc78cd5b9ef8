"""The blocks: registration (the CLI, as users run it), what the Prefect UI shows, saving and
loading with the token kept secret, validation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect.client.orchestration import get_client
from pydantic import SecretStr, ValidationError

from runbridge.core.config import ClientConfig
from runbridge.core.errors import ConfigError
from runbridge.core.schedule import PollSchedule, RetryPolicy
from runbridge.core.states import RunState
from runbridge.prefect_blocks import ExternalRunJob, RunbridgeCredentials
from runbridge.prefect_blocks.credentials import DOCS_URL
from runbridge.testing.rest import REST_CONFIG

from .conftest import TOKEN


def test_prefect_block_register_registers_both_blocks(prefect_api):
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "runbridge.prefect_blocks"],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully registered 2 blocks" in done.stdout, done.stdout
    with get_client(sync_client=True) as client:
        credentials = client.read_block_type_by_slug("runbridge-credentials")
        job = client.read_block_type_by_slug("runbridge-external-run-job")
    assert credentials.name == "Runbridge Credentials"
    assert job.name == "Runbridge External Run Job"
    for block_type, cls in ((credentials, "RunbridgeCredentials"), (job, "ExternalRunJob")):
        assert str(block_type.documentation_url) == DOCS_URL
        assert block_type.description and "runbridge" in block_type.description
        assert "from runbridge.prefect_blocks import" in block_type.code_example
        assert cls in block_type.code_example


def test_credentials_save_and_load_keep_the_token_secret():
    RunbridgeCredentials(
        platform="langgraph", base_url="https://agents.example.com/", token=TOKEN
    ).save("secret-test", overwrite=True)
    with get_client(sync_client=True) as client:
        stored = client.read_block_document_by_name(
            "secret-test", "runbridge-credentials", include_secrets=False
        )
    assert stored.data["token"] != TOKEN  # what the API shows is obfuscated
    loaded = RunbridgeCredentials.load("secret-test")
    assert loaded.token is not None and loaded.token.get_secret_value() == TOKEN
    assert loaded.base_url == "https://agents.example.com"
    for text in (repr(loaded), str(loaded), loaded.model_dump_json(), repr(loaded.get_client())):
        assert TOKEN not in text


def test_a_job_block_saves_and_loads_with_its_credentials():
    credentials = RunbridgeCredentials(
        platform="rest",
        base_url="http://jobs.example.com",
        token=TOKEN,
        options=REST_CONFIG,
        poll_max_interval=20,
        poll_backoff=2,
    )
    ExternalRunJob(
        credentials=credentials,
        params={"job": "nightly"},
        wait_timeout=600,
        run_timeout=3600,
        poll_interval=2,
        error_window=120,
        success=["succeeded", "partial"],
        relaunch_failed=True,
    ).save("nightly-job", overwrite=True)
    job = ExternalRunJob.load("nightly-job")
    assert job.credentials.token.get_secret_value() == TOKEN
    assert job.params == {"job": "nightly"} and job.relaunch_failed
    policy = job.wait_policy()
    assert policy.wait_timeout == 600 and policy.run_timeout == 3600
    assert policy.error_window == 120
    # the job's poll fields over the credentials' (those left empty)
    assert policy.poll == PollSchedule(first=2, factor=2, cap=20)
    assert policy.success == {RunState.SUCCEEDED, RunState.PARTIAL}
    # nothing set on the job: the credentials' schedule and error window (the client's)
    plain = ExternalRunJob(credentials=credentials).wait_policy()
    assert plain.poll is None and plain.error_window is None


def test_the_credentials_build_one_client_configuration():
    credentials = RunbridgeCredentials(
        platform="rest",
        base_url="https://jobs.example.com/",
        token=TOKEN,
        options=REST_CONFIG,
        request_timeout=12,
        retry_attempts=2,
        error_window=45,
        poll_interval=0.5,
        poll_max_interval=5,
        poll_backoff=2,
    )
    config = credentials.client_config()
    assert config == ClientConfig(
        "rest",
        "https://jobs.example.com",
        TOKEN,
        options=REST_CONFIG,
        request_timeout=12,
        retry=RetryPolicy(attempts=2),
        poll=PollSchedule(first=0.5, factor=2, cap=5),
        error_window=45,
    )
    with credentials.get_client() as client:
        assert (client.request_timeout, client.error_window) == (12, 45)
        assert client.retry.attempts == 2 and client.poll.cap == 5
    # equal credentials, one fingerprint (so one shared client); another token, another
    same = RunbridgeCredentials.model_validate(credentials.model_dump())
    same.token = credentials.token
    assert same.client_config().fingerprint() == config.fingerprint()
    rotated = credentials.model_copy(update={"token": SecretStr("another-token")})
    assert rotated.client_config().fingerprint() != config.fingerprint()
    assert TOKEN not in config.fingerprint() + repr(config)


def test_the_defaults_are_cores():
    credentials = RunbridgeCredentials(platform="langgraph", base_url="https://x.example.com")
    assert credentials.client_config() == ClientConfig("langgraph", "https://x.example.com")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"platform": "nope", "base_url": "http://x"}, "unknown platform 'nope'"),
        ({"platform": "langgraph", "base_url": "ftp://x"}, "base_url must be an http://"),
        ({"platform": "rest", "base_url": "http://x"}, "rest provider: status is required"),
        ({"platform": "langgraph", "base_url": "http://x", "options": {"nope": 1}}, "'nope'"),
        (
            {"platform": "langgraph", "base_url": "http://x", "poll_max_interval": 0.5},
            r"poll_max_interval \(0.5\) must be >= poll_interval \(1.0\)",
        ),
    ],
)
def test_bad_credentials_are_a_config_error_naming_the_field(fields, message):
    """Checked when the block is built or loaded (not at the first request): pydantic reports
    runbridge's ConfigError, whose message names the field, and never echoes the token."""
    with pytest.raises(ValidationError, match=message) as caught:
        RunbridgeCredentials(**fields, token=TOKEN)
    (error,) = caught.value.errors()
    assert isinstance(error["ctx"]["error"], ConfigError)
    assert TOKEN not in str(caught.value)


def test_a_field_changed_after_loading_fails_when_the_configuration_is_read():
    credentials = RunbridgeCredentials(platform="langgraph", base_url="http://x")
    credentials.base_url = "ftp://x"
    with pytest.raises(ConfigError, match="base_url"):
        credentials.client_config()


def test_success_states_must_be_end_states():
    credentials = RunbridgeCredentials(platform="rest", base_url="http://x", options=REST_CONFIG)
    with pytest.raises(ValidationError, match="not a terminal state"):
        ExternalRunJob(credentials=credentials, success=["RUNNING"])


def test_a_job_poll_schedule_is_checked_against_the_credentials():
    credentials = RunbridgeCredentials(
        platform="langgraph", base_url="http://x", token=TOKEN, poll_max_interval=5
    )
    with pytest.raises(ValidationError, match="poll_max_interval") as caught:
        ExternalRunJob(credentials=credentials, poll_interval=10)
    assert TOKEN not in str(caught.value)
