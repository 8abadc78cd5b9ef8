"""Webhook deliveries without I/O: signatures and ``parse_delivery``."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from runbridge import ConfigError, ProtocolError, RunRef, RunState
from runbridge.core.errors import NotSupported
from runbridge.core.providers.langgraph import LangGraph
from runbridge.core.providers.lume import Lume
from runbridge.core.webhooks import (
    WebhookError,
    parse_delivery,
    sign,
    signature_header,
    verify_signature,
)

SECRET = "whsec-123"
RID = "run_01HYE5ZJ7Q8ZK1N5C4W2T9B3XA"


def payload(status: str = "SUCCEEDED", **extra: Any) -> dict[str, Any]:
    return {
        "event": "run.completed",
        "run_id": RID,
        "status": status,
        "flow_version": "invoice_processor:v3",
        "source_path": "s3://b/1.csv",
        "run_metadata": {"runbridge_key": "k"},
        "created_at": "2024-07-30T10:00:00Z",
        "completed_at": "2024-07-30T10:02:30Z",
        "results": {"input_rows": 200, "mapped_rows": 190, "rejected_rows": 10},
        "validation": {"top_errors": [{"error_code": "BAD", "field": "x", "count": 10}]},
        "errors": [],
        **extra,
    }


def encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


# -- signatures -----------------------------------------------------------------------------------
def test_sign_is_hmac_sha256_hex_with_prefix() -> None:
    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(body, SECRET) == f"sha256={expected}"
    assert sign(body.decode(), SECRET.encode()) == sign(body, SECRET)


@pytest.mark.parametrize(
    ("signature", "valid"),
    [
        ("good", True),
        ("bare", True),
        ("upper", True),
        ("SHA256=prefix", True),
        (None, False),
        ("", False),
        ("sha256=", False),
        ("sha256=00", False),
        ("sha256=é", False),
    ],
)
def test_verify_signature(signature: str | None, valid: bool) -> None:
    body = encode(payload())
    good = sign(body, SECRET)
    hexdigest = good.removeprefix("sha256=")
    value = {
        "good": good,
        "bare": hexdigest,
        "upper": good.upper().replace("SHA256=", "sha256="),
        "SHA256=prefix": "SHA256=" + hexdigest,
    }.get(str(signature), signature)
    assert verify_signature(body, value, SECRET) is valid


def test_a_changed_body_or_secret_does_not_verify() -> None:
    body = encode(payload())
    signature = sign(body, SECRET)
    assert not verify_signature(body + b" ", signature, SECRET)
    assert not verify_signature(body, signature, "other")
    with pytest.raises(ConfigError, match="secret"):
        verify_signature(body, signature, "")


def test_signature_header_comes_from_the_provider() -> None:
    assert signature_header(Lume()) == "x-lume-signature-256"
    assert signature_header(LangGraph()) is None


# -- parse_delivery -----------------------------------------------------------------------------
def test_a_signed_delivery_becomes_the_terminal_status() -> None:
    body = encode(payload())
    headers = {"X-Lume-Signature-256": sign(body, SECRET), "Content-Type": "application/json"}
    status = parse_delivery(Lume(), body, headers, secret=SECRET)
    assert status.ref == RunRef("lume", RID)
    assert (status.state, status.raw_state) == (RunState.SUCCEEDED, "SUCCEEDED")
    assert status.outputs["source_path"] == "s3://b/1.csv"
    assert status.outputs["run_metadata"] == {"runbridge_key": "k"}
    meta = Lume.metadata(status)
    assert meta.results.input_rows == 200 and meta.run.run_id == RID
    assert status.ended_at is not None and status.created_at is not None
    json.dumps(status.to_dict())


@pytest.mark.parametrize(
    ("policy", "state"),
    [("fail", RunState.PARTIAL), ("accept", RunState.SUCCEEDED), (0.05, RunState.SUCCEEDED),
     (0.04, RunState.PARTIAL)],
)  # fmt: skip
def test_the_providers_partial_policy_applies(policy: Any, state: RunState) -> None:
    status = parse_delivery(Lume(partial=policy), encode(payload("PARTIAL_FAILED")))
    assert (status.state, status.raw_state) == (state, "PARTIAL_FAILED")
    assert status.message is not None and "10 of 200 rows rejected (5.00%)" in status.message
    assert "BAD on x (10)" in status.message


def test_failed_and_crashed_deliveries_carry_the_error() -> None:
    errors = [{"stage": "TRANSFORMING", "error_code": "E1", "message": "boom"}]
    failed = parse_delivery("lume", encode(payload("FAILED", errors=errors)))
    assert (failed.state, failed.message) == (RunState.FAILED, "TRANSFORMING: E1: boom")
    crashed = parse_delivery("lume", payload("CRASHED"))  # already decoded, not verified
    assert crashed.state is RunState.FAILED and crashed.raw_state == "CRASHED"


def test_envelope_id_and_full_metadata_are_read_too() -> None:
    meta = {"results": {"input_rows": 5, "rejected_rows": 0}, "run": {"status": "SUCCEEDED"}}
    body = {"type": "run.completed", "data": {"id": RID, "status": "SUCCEEDED", "metadata": meta}}
    status = parse_delivery("lume", encode(body))
    assert status.ref.id == RID and status.state is RunState.SUCCEEDED
    assert status.outputs["metadata"] == meta


@pytest.mark.parametrize(
    ("headers", "match"),
    [({}, "missing"), ({"x-lume-signature-256": "sha256=00"}, "does not match")],
)
def test_unsigned_or_forged_deliveries_are_rejected(headers: dict[str, str], match: str) -> None:
    with pytest.raises(WebhookError, match=match) as info:
        parse_delivery("lume", encode(payload()), headers, secret=SECRET)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (encode(["x"]), "JSON object"),
        (encode({"status": "SUCCEEDED"}), "run_id"),
        (encode({"run_id": RID}), "status"),
    ],
)
def test_bodies_that_are_not_deliveries(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_delivery("lume", body)


def test_misuse_is_a_config_error_or_not_supported() -> None:
    with pytest.raises(ConfigError, match="raw request body"):
        parse_delivery("lume", payload(), {}, secret=SECRET)
    with pytest.raises(NotSupported, match="langgraph has no webhook"):
        parse_delivery(LangGraph(), encode(payload()))
    with pytest.raises(ConfigError, match="unknown platform"):
        parse_delivery("nope", encode(payload()))
    with pytest.raises(ConfigError, match="Provider or a platform name"):
        parse_delivery(42, encode(payload()))  # type: ignore[arg-type]


# -- odd input: a ConfigError for the caller's mistakes, a ProtocolError for the body's -----------
@pytest.mark.parametrize(
    "body",
    [None, 12, 10**12, 1.5, ["a"], object(), "\ud800"],
    # not repr: an object's repr names its address, and the two pytest-xdist workers must
    # collect the same ids
    ids=lambda body: type(body).__name__ if type(body) is object else repr(body),
)
def test_a_body_of_the_wrong_type_is_a_config_error(body: Any) -> None:
    with pytest.raises(ConfigError, match="webhook body"):
        parse_delivery(Lume(), body)
    with pytest.raises(ConfigError, match="webhook body"):
        sign(body, SECRET)


@pytest.mark.parametrize("headers", [[("x", "y")], "x-lume-signature-256: abc", 5])
def test_headers_of_the_wrong_type_are_a_config_error(headers: Any) -> None:
    with pytest.raises(ConfigError, match="headers must be a mapping"):
        parse_delivery(Lume(), json.dumps(payload()), headers)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,  # nested deeper than the JSON reader goes
        b"\xff\xfe{",
        b'{"data": {"run_id": 5, "status": "SUCCEEDED"}, "x": ' + b"9" * 5000 + b"}",
        b"[]",
        b'{"data": {"run_id": {"id": "r"}, "status": "SUCCEEDED"}}',
    ],
    ids=["deep", "not utf-8", "huge int", "a list", "id not an id"],
)
def test_bodies_that_are_not_deliveries_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_delivery(Lume(), body)


def test_a_numeric_run_id_is_read_as_an_id() -> None:
    body = json.dumps(payload(run_id=42))
    assert parse_delivery(Lume(), body).ref == RunRef("lume", "42")
