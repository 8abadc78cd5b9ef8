"""RunRef and RunStatus at the edges: every RunRef that constructs survives its string, dict and
JSON forms; anything else, of any type, is a ConfigError (never AttributeError or TypeError)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbridge.core.errors import ConfigError
from runbridge.core.models import PLATFORM_NAME, RunRef, RunStatus
from runbridge.core.registry import available
from runbridge.core.states import RunState

FAST = settings(max_examples=300, deadline=None)

# Any text at all, lone surrogates included: a RunRef must accept it or refuse it cleanly.
ANY_TEXT = st.text(st.characters(), max_size=12) | st.sampled_from(
    ["", " ", "a:b", "a?b", "a/b", " a", "a ", "a\n", "\x00", "%", "%zz", "%ff", "a=b&c", "\ud800"]
)
PLATFORMS = st.from_regex(PLATFORM_NAME, fullmatch=True).filter(lambda s: len(s) < 20) | ANY_TEXT
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)
ODD = JSON | st.binary(max_size=20) | st.just(object()) | st.tuples(ANY_TEXT, ANY_TEXT)
SCOPES = st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=4) | st.dictionaries(
    st.integers() | st.none() | ANY_TEXT, ANY_TEXT | st.integers(), max_size=3
)


def _constructs(platform: Any, run_id: Any, scope: Any) -> RunRef | None:
    try:
        return RunRef(platform, run_id, scope)
    except ConfigError:
        return None


@FAST
@given(platform=PLATFORMS, run_id=ANY_TEXT | st.integers() | st.none(), scope=SCOPES | ODD)
def test_a_ref_that_constructs_round_trips_and_the_rest_is_a_config_error(
    platform: Any, run_id: Any, scope: Any
) -> None:
    ref = _constructs(platform, run_id, scope)
    if ref is None:
        return
    text = ref.to_string()
    assert RunRef.parse(text) == ref
    assert RunRef.parse(f"  {text}\n") == ref
    assert RunRef.from_dict(ref.to_dict()) == ref
    assert RunRef.parse(json.dumps(ref.to_dict())) == ref
    assert RunRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert RunRef.coerce(text) == ref
    assert hash(RunRef.parse(text)) == hash(ref)
    # the string form is one line of printable ASCII, so it survives logs and env vars
    assert text.isascii() and text.isprintable() and text == text.strip()


@FAST
@given(platform=PLATFORMS)
def test_the_platform_name_rule(platform: Any) -> None:
    ref = _constructs(platform, "r1", {})
    assert (ref is not None) == bool(PLATFORM_NAME.fullmatch(platform))


@pytest.mark.parametrize(
    "platform", ["", " rest", "rest ", "a:b", "a?b", "a/b", "two words", "tab\tname", "nl\n", "-x"]
)
def test_platform_names_the_string_form_cannot_carry_are_refused(platform: str) -> None:
    with pytest.raises(ConfigError, match="platform"):
        RunRef(platform, "r1")


def test_every_registered_platform_and_the_test_entry_point_names_are_valid() -> None:
    for name in [*available(), "acme", "jobs", "other", "my-platform", "acme.jobs", "a_b"]:
        assert RunRef(name, "r1").platform == name


@pytest.mark.parametrize(
    "scope",
    [{1: "a"}, {None: "a"}, {"": "a"}, {"k": 1}, {"k": None}, {1: "a", "b": "c"}, {"k": "\ud800"}],
    ids=repr,
)
def test_odd_scopes_are_config_errors(scope: dict[Any, Any]) -> None:
    with pytest.raises(ConfigError, match="scope"):
        RunRef("rest", "r1", scope)


@pytest.mark.parametrize(
    "text",
    [
        None,
        b"rest:r1",
        bytearray(b"rest:r1"),
        42,
        ["rest:r1"],
        "rest:%ff",  # a percent-escape that is not UTF-8
        "rest:r1?k",  # a scope field without '='
        "rest:r1?a=1&a=2",  # a key given twice
        "rest:r1?a=1&&b=2",
        "rest:r1?=v",  # an empty key
        '{"platform": "rest", "id": "r1", "scope": {"k": 1}}',
        '{"platform": "rest", "id": ' + "9" * 5000 + "}",  # more digits than int() reads
        '{"a":' * 50_000 + "1" + "}" * 50_000,  # nested too deeply for the JSON reader
        '{"platform": "bad name", "id": "r1"}',
        "bad name:r1",
        "[1, 2]",
    ],
    ids=lambda v: repr(v)[:40],
)
def test_parse_refuses_what_it_cannot_read(text: Any) -> None:
    with pytest.raises(ConfigError):
        RunRef.parse(text)


@FAST
@given(value=ODD | ANY_TEXT)
def test_parse_coerce_and_from_dict_raise_only_config_errors(value: Any) -> None:
    for read in (RunRef.parse, RunRef.coerce, RunRef.from_dict):
        try:
            ref = read(value)
        except ConfigError:
            continue
        assert isinstance(ref, RunRef)
        assert RunRef.parse(ref.to_string()) == ref


@FAST
@given(
    data=st.fixed_dictionaries(
        {},
        optional={
            "ref": ODD | st.just({"platform": "rest", "id": "r1"}),
            "state": ODD | st.sampled_from([s.value for s in RunState]),
            "raw_state": ODD,
            "url": ODD,
            "message": ODD,
            "outputs": ODD,
            "created_at": ODD | st.just("2024-05-01T12:00:00+00:00"),
            "updated_at": ODD,
            "ended_at": ODD,
            "cancelled_by_runbridge": ODD,
        },
    )
    | ODD
)
def test_run_status_from_dict_of_garbage_is_a_config_error(data: Any) -> None:
    try:
        status = RunStatus.from_dict(data)
    except ConfigError:
        return
    # what it accepts round-trips through JSON
    assert RunStatus.from_dict(json.loads(json.dumps(status.to_dict()))) == status


def test_run_status_fields_are_checked_at_construction() -> None:
    ref = RunRef("rest", "r1")
    with pytest.raises(ConfigError, match="raw_state"):
        RunStatus(ref, RunState.RUNNING, 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="url"):
        RunStatus(ref, RunState.RUNNING, "x", url=["u"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="created_at"):
        RunStatus(ref, RunState.RUNNING, "x", created_at="2024-01-01")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="state"):
        RunStatus(ref, ["RUNNING"], "x")  # type: ignore[arg-type]
