"""The blocks: registration (the CLI, as users run it), what the Prefect UI shows, saving and
loading with the token kept secret, validation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect.client.orchestration import get_client
from pydantic import ValidationError

from runbridge.core.states import RunState
from runbridge.prefect_blocks import ExternalRunJob, RunbridgeCredentials
from runbridge.prefect_blocks.credentials import DOCS_URL

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
        platform="rest", base_url="http://jobs.example.com", token=TOKEN
    )
    ExternalRunJob(
        credentials=credentials,
        params={"job": "nightly"},
        timeout_seconds=600,
        run_timeout_seconds=3600,
        poll_interval_seconds=2,
        success_states=["succeeded", "partial"],
    ).save("nightly-job", overwrite=True)
    job = ExternalRunJob.load("nightly-job")
    assert job.credentials.token.get_secret_value() == TOKEN
    assert job.params == {"job": "nightly"}
    policy = job.wait_policy()
    assert policy.timeout == 600 and policy.run_timeout == 3600
    assert policy.poll is not None and policy.poll.first == 2
    assert policy.success == {RunState.SUCCEEDED, RunState.PARTIAL}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"platform": "nope", "base_url": "http://x"}, "unknown platform 'nope'"),
        ({"platform": "rest", "base_url": "ftp://x"}, "http:// or https://"),
    ],
)
def test_bad_credentials_are_rejected(fields, message):
    with pytest.raises(ValidationError, match=message):
        RunbridgeCredentials(**fields)


def test_success_states_must_be_end_states():
    credentials = RunbridgeCredentials(platform="rest", base_url="http://x")
    with pytest.raises(ValidationError, match="not a terminal state"):
        ExternalRunJob(credentials=credentials, success_states=["RUNNING"])
