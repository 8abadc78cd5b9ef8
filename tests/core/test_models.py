"""RunRef, RunStatus, LaunchSpec, parse_time, parse_states and RunState."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runbridge.core.errors import ConfigError, RunFailed
from runbridge.core.models import LaunchSpec, RunRef, RunStatus, parse_time
from runbridge.core.states import ACTIVE, DEFAULT_SUCCESS, TERMINAL, RunState, parse_states

# -- RunRef ----------------------------------------------------------------------------------------
AWKWARD_REFS = [
    RunRef("rest", "run-1"),
    RunRef("langgraph", "run-1", {"thread_id": "t-1"}),
    RunRef("rest", "a/b/c", {"job": "etl/daily"}),
    RunRef("rest", "what?x=1&y=2", {"q": "a?b=c&d"}),
    RunRef("rest", "with space", {"name": "two words", "other key": " padded "}),
    RunRef("rest", "ünïcødé-🚀", {"projet": "données", "日本": "東京"}),
    RunRef("rest", "100%", {"pct": "50%", "plus": "a+b", "hash": "#frag"}),
    RunRef("rest", "colon:in:id", {"k": "v:w", "empty": ""}),
    RunRef("rest", "{braces}", {"json": '{"a": 1}'}),
]


@pytest.mark.parametrize("ref", AWKWARD_REFS, ids=repr)
def test_runref_round_trips(ref: RunRef) -> None:
    assert RunRef.from_dict(ref.to_dict()) == ref
    assert RunRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert RunRef.parse(ref.to_string()) == ref
    assert RunRef.parse(json.dumps(ref.to_dict())) == ref
    assert RunRef.coerce(ref) is ref
    assert RunRef.coerce(ref.to_dict()) == ref
    assert RunRef.coerce(ref.to_string()) == ref
    assert RunRef.coerce(str(ref)) == ref


def test_runref_string_form_is_readable_and_quoted() -> None:
    ref = RunRef("rest", "a/b?c", {"job": "x y", "a": "1&2"})
    # the scope is sorted, the id and values quoted so '/', '?', '&' cannot split them
    assert ref.to_string() == "rest:a%2Fb%3Fc?a=1%262&job=x+y"
    assert RunRef("langgraph", "r1", {"thread_id": "t1"}).to_string() == "langgraph:r1?thread_id=t1"
    assert RunRef("rest", "r1").to_string() == "rest:r1"


def test_runref_parse_tolerates_surrounding_whitespace() -> None:
    assert RunRef.parse("  rest:r1?job=j \n") == RunRef("rest", "r1", {"job": "j"})


_ids = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
_scope = st.dictionaries(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    max_size=4,
)
_platforms = st.from_regex(r"[a-z][a-z0-9_\-]{0,15}", fullmatch=True)


@given(platform=_platforms, run_id=_ids, scope=_scope)
def test_runref_string_round_trip_property(platform: str, run_id: str, scope: dict) -> None:
    ref = RunRef(platform, run_id, scope)
    text = ref.to_string()
    assert RunRef.parse(text) == ref
    assert RunRef.parse(json.dumps(ref.to_dict())) == ref
    assert RunRef.from_dict(ref.to_dict()) == ref


def test_runref_equality_and_hashing() -> None:
    a = RunRef("rest", "1", {"x": "1", "y": "2"})
    b = RunRef("rest", "1", {"y": "2", "x": "1"})  # scope order does not matter
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: "v"}[b] == "v"
    assert a != RunRef("rest", "1", {"x": "1"})
    assert a != RunRef("rest", "2", {"x": "1", "y": "2"})
    assert a != RunRef("other", "1", {"x": "1", "y": "2"})
    assert len({a, RunRef("rest", "1"), RunRef("rest", "2")}) == 3


def test_runref_is_frozen_and_copies_its_scope() -> None:
    scope = {"job": "a"}
    ref = RunRef("rest", "1", scope)
    scope["job"] = "b"
    assert ref.scope == {"job": "a"}
    with pytest.raises(AttributeError):
        ref.id = "2"  # type: ignore[misc]
    # to_dict hands out a copy
    ref.to_dict()["scope"]["job"] = "c"
    assert ref.scope == {"job": "a"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RunRef("", "1"), "platform must be a non-empty string"),
        (lambda: RunRef(None, "1"), "platform must be a non-empty string"),  # type: ignore[arg-type]
        (lambda: RunRef("rest", ""), "id must be a non-empty string"),
        (lambda: RunRef("rest", 12), "id must be a non-empty string"),  # type: ignore[arg-type]
        (lambda: RunRef("rest", "1", {"n": 1}), r"scope\['n'\] must be a string"),
        (lambda: RunRef("rest", "1", ["a"]), "scope must be a mapping"),  # type: ignore[arg-type]
        (lambda: RunRef.from_dict({"id": "1"}), "missing platform"),
        (lambda: RunRef.from_dict({"platform": "rest"}), "missing id"),
        (lambda: RunRef.from_dict({}), "missing platform, id"),
        (lambda: RunRef.from_dict(["rest", "1"]), "must be a mapping, got list"),  # type: ignore[arg-type]
        (lambda: RunRef.from_dict({"platform": "rest", "id": ""}), "id must be a non-empty"),
        (lambda: RunRef.parse(""), "expected 'platform:run_id"),
        (lambda: RunRef.parse("no-colon"), "expected 'platform:run_id"),
        (lambda: RunRef.parse("rest:"), "expected 'platform:run_id"),
        (lambda: RunRef.parse(":r1"), "expected 'platform:run_id"),
        (lambda: RunRef.parse('{"platform": "rest"'), "not valid JSON"),
        (lambda: RunRef.parse('{"platform": "rest"}'), "missing id"),
        (lambda: RunRef.coerce(42), "cannot make a run reference from int"),  # type: ignore[arg-type]
        (lambda: RunRef.coerce(None), "cannot make a run reference from NoneType"),  # type: ignore[arg-type]
    ],
)
def test_runref_bad_inputs(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_runref_from_dict_rejects_a_null_id() -> None:
    with pytest.raises(ConfigError, match="id"):
        RunRef.from_dict({"platform": "rest", "id": None})


@pytest.mark.parametrize("scope", ["job=1", 5, ["a"]])
def test_runref_from_dict_rejects_a_bad_scope(scope: object) -> None:
    with pytest.raises(ConfigError, match="scope"):
        RunRef.from_dict({"platform": "rest", "id": "1", "scope": scope})


# -- RunState / parse_states ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "terminal"),
    [
        (RunState.PENDING, False),
        (RunState.RUNNING, False),
        (RunState.UNKNOWN, False),
        (RunState.SUCCEEDED, True),
        (RunState.FAILED, True),
        (RunState.CANCELLED, True),
        (RunState.TIMED_OUT, True),
        (RunState.PARTIAL, True),
    ],
)
def test_run_state_is_terminal(state: RunState, terminal: bool) -> None:
    assert state.is_terminal is terminal
    assert (state in TERMINAL) is terminal
    assert (state in ACTIVE) is not terminal


def test_run_state_str_and_value() -> None:
    assert str(RunState.TIMED_OUT) == "TIMED_OUT"
    assert f"{RunState.PARTIAL}" == "PARTIAL"
    assert RunState("SUCCEEDED") is RunState.SUCCEEDED
    assert {RunState.SUCCEEDED} == DEFAULT_SUCCESS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("succeeded", {RunState.SUCCEEDED}),
        ("SUCCEEDED,partial", {RunState.SUCCEEDED, RunState.PARTIAL}),
        (" succeeded , partial ,", {RunState.SUCCEEDED, RunState.PARTIAL}),
        (["succeeded", RunState.CANCELLED], {RunState.SUCCEEDED, RunState.CANCELLED}),
        (RunState.TIMED_OUT, {RunState.TIMED_OUT}),
        (("failed", "FAILED"), {RunState.FAILED}),
    ],
)
def test_parse_states(value, expected: set[RunState]) -> None:
    assert parse_states(value) == frozenset(expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bogus", "unknown run state 'bogus'; expected one of CANCELLED, FAILED, PARTIAL"),
        (["succeeded", "nope"], "unknown run state 'nope'"),
        ("running", "RUNNING is not a terminal state"),
        ([RunState.UNKNOWN], "UNKNOWN is not a terminal state"),
        ("", "at least one terminal state"),
        ([], "at least one terminal state"),
        (" , ", "at least one terminal state"),
    ],
)
def test_parse_states_errors(value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_states(value)


# -- parse_time ------------------------------------------------------------------------------------
UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:30:15Z", T0),
        ("2024-05-01T12:30:15.250Z", T0.replace(microsecond=250000)),
        ("2024-05-01T14:30:15+02:00", T0),
        ("2024-05-01T07:30:15-05:00", T0),
        ("2024-05-01T12:30:15", T0),  # naive: taken as UTC
        (" 2024-05-01T12:30:15Z ", T0),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        (1714566615, T0),  # epoch seconds
        (1714566615.5, T0.replace(microsecond=500000)),
        (1714566615000, T0),  # epoch milliseconds
        (1714566615250, T0.replace(microsecond=250000)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (datetime(2024, 5, 1, 12, 30, 15), T0),  # naive datetime: UTC
        (T0.astimezone(timezone(timedelta(hours=3))), T0),
        (None, None),
        ("", None),
        ("yesterday", None),
        ("2024-13-45T99:00:00Z", None),
        (True, None),
        ([2024, 5, 1], None),
        ({"at": "2024-05-01"}, None),
    ],
)
def test_parse_time(value, expected: datetime | None) -> None:
    parsed = parse_time(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None


@pytest.mark.parametrize("value", [1e20, float("nan"), float("inf"), 10**30])
def test_parse_time_never_raises_on_bad_epochs(value: float) -> None:
    assert parse_time(value) is None


# -- RunStatus ---------------------------------------------------------------------------------------
REF = RunRef("rest", "r-1", {"job": "nightly"})


def make_status(**kw) -> RunStatus:
    fields = {"ref": REF, "state": RunState.RUNNING, "raw_state": "running"}
    fields.update(kw)
    return RunStatus(**fields)


FULL = make_status(
    state=RunState.FAILED,
    raw_state="failed",
    url="https://jobs.example.com/ui/runs/r-1",
    message="disk full",
    outputs={"rows": 3, "nested": {"a": [1, 2]}},
    created_at=T0,
    updated_at=T0 + timedelta(seconds=5),
    ended_at=T0 + timedelta(seconds=9, microseconds=123),
)


@pytest.mark.parametrize("status", [make_status(), FULL], ids=["minimal", "full"])
def test_run_status_round_trip(status: RunStatus) -> None:
    data = status.to_dict()
    text = json.dumps(data)  # must be plain JSON (XCom, trigger events, metadata)
    assert RunStatus.from_dict(json.loads(text)) == status
    assert data["is_terminal"] is status.is_terminal
    assert data["state"] == status.state.value


def test_run_status_to_dict_shape() -> None:
    assert FULL.to_dict() == {
        "ref": {"platform": "rest", "id": "r-1", "scope": {"job": "nightly"}},
        "state": "FAILED",
        "raw_state": "failed",
        "is_terminal": True,
        "url": "https://jobs.example.com/ui/runs/r-1",
        "message": "disk full",
        "outputs": {"rows": 3, "nested": {"a": [1, 2]}},
        "created_at": "2024-05-01T12:30:15+00:00",
        "updated_at": "2024-05-01T12:30:20+00:00",
        "ended_at": "2024-05-01T12:30:24.000123+00:00",
        "cancelled_by_runbridge": False,
    }


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"ref": {"platform": "rest", "id": "1"}, "raw_state": "x"},
        {"ref": {"platform": "rest", "id": "1"}, "state": "WEIRD", "raw_state": "x"},
        {"ref": "rest:1", "state": "RUNNING", "raw_state": "x"},
        {"ref": {"platform": "rest"}, "state": "RUNNING", "raw_state": "x"},
    ],
)
def test_run_status_from_dict_errors(data: dict) -> None:
    with pytest.raises(ConfigError):
        RunStatus.from_dict(data)


def test_run_status_validates() -> None:
    with pytest.raises(ConfigError, match="ref must be a RunRef"):
        RunStatus(ref="rest:1", state=RunState.RUNNING, raw_state="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="outputs must be a mapping"):
        make_status(outputs=[1, 2])
    with pytest.raises(ConfigError, match="state must be a RunState"):
        make_status(state="NOT_A_STATE")
    assert make_status(state="SUCCEEDED").state is RunState.SUCCEEDED


@pytest.mark.parametrize(
    ("state", "success", "raises"),
    [
        (RunState.SUCCEEDED, DEFAULT_SUCCESS, False),
        (RunState.FAILED, DEFAULT_SUCCESS, True),
        (RunState.CANCELLED, DEFAULT_SUCCESS, True),
        (RunState.TIMED_OUT, DEFAULT_SUCCESS, True),
        (RunState.PARTIAL, DEFAULT_SUCCESS, True),
        (RunState.PARTIAL, {RunState.SUCCEEDED, RunState.PARTIAL}, False),
        (RunState.SUCCEEDED, {RunState.PARTIAL}, True),
        (RunState.CANCELLED, parse_states("succeeded,cancelled"), False),
        # still going: not a failure, whatever the policy
        (RunState.RUNNING, DEFAULT_SUCCESS, False),
        (RunState.PENDING, {RunState.PARTIAL}, False),
        (RunState.UNKNOWN, DEFAULT_SUCCESS, False),
    ],
)
def test_raise_for_state(state: RunState, success, raises: bool) -> None:
    status = make_status(state=state, raw_state=f"raw-{state.value.lower()}", message="boom")
    if raises:
        with pytest.raises(RunFailed) as info:
            status.raise_for_state(success)
        assert info.value.status is status
        assert "boom" in str(info.value)
        assert state.value in str(info.value)
        assert f"raw-{state.value.lower()}" in str(info.value)
        assert "r-1" in str(info.value)
        assert status.succeeded(success) is False
    else:
        assert status.raise_for_state(success) is status
        assert status.succeeded(success) is state.is_terminal


def test_raise_for_state_without_message() -> None:
    with pytest.raises(RunFailed, match=r"^rest run r-1 ended FAILED \(failed\)$"):
        make_status(state=RunState.FAILED, raw_state="failed").raise_for_state()


def test_summary() -> None:
    assert FULL.summary() == (
        "rest run r-1: FAILED (failed): disk full <https://jobs.example.com/ui/runs/r-1>"
    )
    assert make_status().summary() == "rest run r-1: RUNNING (running)"


# -- LaunchSpec -------------------------------------------------------------------------------------
def test_launch_spec_defaults_and_copy() -> None:
    params = {"job": "a"}
    spec = LaunchSpec(params, key="k-1")
    params["job"] = "b"
    assert spec.params == {"job": "a"}
    assert spec.key == "k-1"
    assert LaunchSpec().params == {}
    assert LaunchSpec().key is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"params": ["a"]}, "launch params must be a mapping, got list"),
        ({"params": "job=a"}, "launch params must be a mapping, got str"),
        ({"key": ""}, "idempotency key must be a non-empty string"),
        ({"key": "   "}, "idempotency key must be a non-empty string"),
        ({"key": 42}, "idempotency key must be a non-empty string"),
    ],
)
def test_launch_spec_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LaunchSpec(**kwargs)
