"""Wire validation and value types (calsched.model)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from calsched import __version__
from calsched.errors import InvalidInputError
from calsched.model import (
    ACTIVE_STATES,
    CURRENT_STATES,
    DEFAULT_WAKE_OPTIONS,
    MAX_ID_CHARS,
    REPORTED_STATES,
    TERMINAL_STATES,
    ActiveSlotReport,
    AgentReport,
    AgentStatus,
    FieldError,
    HeartbeatRequest,
    HeartbeatResponse,
    Id,
    PluginInfo,
    Slot,
    SlotState,
    SlotUpdate,
    first_error,
    format_time,
    parse,
    parse_heartbeat_response,
    utcnow,
)

GOOD_SLOT: dict[str, Any] = {
    "id": "s-18",
    "agent_id": "bob",
    "title": "Daily report",
    "prompt_text": "Write today's report",
    "scheduled_at": "2026-11-27T22:00:00Z",
    "wake_options": {"override_message": None},
}


def slot_with(**changes: Any) -> dict[str, Any]:
    """GOOD_SLOT with some fields changed (a value of ``...`` removes the field)."""
    data = {**GOOD_SLOT, **changes}
    return {k: v for k, v in data.items() if v is not ...}


# -- parse: malformed input names the bad field -----------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (slot_with(id=...), "id"),
        (slot_with(agent_id=...), "agent_id"),
        (slot_with(id=""), "id"),
        (slot_with(agent_id=""), "agent_id"),
        (slot_with(id=17), "id"),
        (slot_with(scheduled_at="not a time"), "scheduled_at"),
        (slot_with(title=["a list"]), "title"),
        (slot_with(wake_options={"override_message": 5}), "wake_options.override_message"),
        (slot_with(wake_options="loud"), "wake_options"),
        ("not an object", "(body)"),
        (None, "(body)"),
    ],
    ids=[
        "id-missing",
        "agent-missing",
        "id-empty",
        "agent-empty",
        "id-not-string",
        "bad-time",
        "title-not-string",
        "nested-override",
        "options-not-object",
        "string-body",
        "null-body",
    ],
)
def test_parse_malformed_slot_names_the_field(data: Any, field: str) -> None:
    """Malformed input raises InvalidInputError whose .field names the bad field."""
    with pytest.raises(InvalidInputError) as info:
        parse(Slot, data)
    assert info.value.field == field
    assert str(info.value).startswith(f"invalid input: {field}: ")
    # Translated at the edge: no pydantic error chained for a user to wade through.
    assert info.value.__suppress_context__
    assert not isinstance(info.value, ValidationError)


@pytest.mark.parametrize("field", ["id", "agent_id"])
def test_identifiers_allow_256_characters_not_257(field: str) -> None:
    """Slot ids and agent ids may be MAX_ID_CHARS (256) characters long, not one more."""
    assert MAX_ID_CHARS == 256  # protocol section 1
    longest = "x" * MAX_ID_CHARS
    assert getattr(parse(Slot, slot_with(**{field: longest})), field) == longest
    with pytest.raises(InvalidInputError) as info:
        parse(Slot, slot_with(**{field: longest + "x"}))
    assert info.value.field == field
    assert "256" in info.value.problem


@pytest.mark.parametrize("value", ["", "x" * (MAX_ID_CHARS + 1)], ids=["empty", "too-long"])
def test_id_type_is_one_to_max_id_chars(value: str) -> None:
    """Id refuses an empty id and one past MAX_ID_CHARS; it takes both bounds."""
    adapter: TypeAdapter[str] = TypeAdapter(Id)
    assert adapter.validate_python("x") == "x"
    assert adapter.validate_python("x" * MAX_ID_CHARS) == "x" * MAX_ID_CHARS
    with pytest.raises(ValidationError):
        adapter.validate_python(value)


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (
            HeartbeatRequest,
            {"identifier": "h" * 257, "captured_at": "2026-11-27T22:00:00Z"},
            "identifier",
        ),
        (HeartbeatRequest, {"identifier": "h"}, "captured_at"),
        (AgentReport, {"id": "a", "status": "asleep"}, "status"),
        (ActiveSlotReport, {"id": "s", "agent_id": "a", "state": "done", "attempt": 1}, "state"),
        (
            ActiveSlotReport,
            {"id": "s", "agent_id": "a", "state": "paused", "attempt": 0},
            "attempt",
        ),
        (
            SlotUpdate,
            {
                "identifier": "h",
                "status": "pending",
                "attempt": 1,
                "occurred_at": "2026-11-27T22:00:00Z",
            },
            "status",
        ),
        (
            SlotUpdate,
            {
                "identifier": "h",
                "status": "dispatching",
                "attempt": 1,
                "occurred_at": "2026-11-27T22:00:00Z",
            },
            "status",
        ),
        (
            SlotUpdate,
            {
                "identifier": "h",
                "status": "completed",
                "attempt": 0,
                "occurred_at": "2026-11-27T22:00:00Z",
            },
            "attempt",
        ),
    ],
    ids=[
        "identifier-too-long",
        "captured-missing",
        "agent-status",
        "active-state",
        "active-attempt",
        "update-pending",
        "update-dispatching",
        "update-attempt",
    ],
)
def test_parse_other_wire_types_name_the_field(model: type[Any], data: Any, field: str) -> None:
    """Every wire type reports its bad field the same way."""
    with pytest.raises(InvalidInputError) as info:
        parse(model, data)
    assert info.value.field == field


def _validation_error(model: type[Any], data: Any) -> ValidationError:
    """The error pydantic raises for ``data`` as ``model``."""
    with pytest.raises(ValidationError) as info:
        TypeAdapter(model).validate_python(data)
    return info.value


def test_first_error_words_a_validator_message_without_its_prefix() -> None:
    """A ValueError from a validator reads as its own words, not "Value error, ..."."""
    data = {"identifier": "h", "status": "pending", "attempt": 1, "occurred_at": utcnow()}
    error = first_error(_validation_error(SlotUpdate, data))
    assert error.loc == ("status",)
    assert error.field == "status"
    assert error.kind == "value_error"
    assert error.message.startswith("must be one of [")


def test_first_error_dots_a_nested_location() -> None:
    """A nested field is named by its dotted path."""
    data = {**GOOD_SLOT, "wake_options": {"override_message": 7}}
    error = first_error(_validation_error(Slot, data))
    assert error == FieldError(
        loc=("wake_options", "override_message"),
        kind="string_type",
        message="Input should be a valid string",
    )


def test_first_error_says_a_dataclass_type_error_as_for_models() -> None:
    """A non-object for a dataclass type reads like pydantic's message for models."""
    error = first_error(_validation_error(Slot, "not an object"))
    assert (error.loc, error.field) == ((), "")
    assert error.message == "Input should be a valid dictionary or instance of Slot"


def test_parse_words_its_error_with_first_error() -> None:
    """parse() raises InvalidInputError built from first_error: the field, then the words."""
    data = {"identifier": "h", "status": "pending", "attempt": 1, "occurred_at": utcnow()}
    with pytest.raises(InvalidInputError) as info:
        parse(SlotUpdate, data)
    assert info.value.field == "status"
    assert "Value error" not in str(info.value)
    with pytest.raises(InvalidInputError) as whole:
        parse(Slot, "not an object")
    assert whole.value.field == "(body)"


@pytest.mark.parametrize("status", sorted(REPORTED_STATES))
def test_slot_update_accepts_every_reported_state(status: SlotState) -> None:
    """SlotUpdate takes in_progress, paused, completed and aborted."""
    update = parse(
        SlotUpdate,
        {
            "identifier": "h",
            "status": status.value,
            "attempt": 2,
            "occurred_at": "2026-11-27T22:00:00Z",
        },
    )
    assert update.status is status


def test_unknown_fields_are_ignored() -> None:
    """Receivers ignore unknown fields, at the top level and nested."""
    slot = parse(
        Slot, slot_with(colour="blue", wake_options={"override_message": None, "volume": 11})
    )
    assert "colour" not in slot.to_wire()
    assert slot.to_wire()["wake_options"] == {"override_message": None}
    beat = parse(
        HeartbeatRequest,
        {"identifier": "h", "captured_at": "2026-11-27T22:00:00Z", "future_field": [1, 2]},
    )
    assert "future_field" not in beat.to_wire()


def test_wire_values_are_immutable() -> None:
    """Parsed wire values cannot be changed after validation."""
    slot = parse(Slot, GOOD_SLOT)
    with pytest.raises(FrozenInstanceError):
        slot.id = "other"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        slot.wake_options.override_message = "loud"  # type: ignore[misc]
    beat = parse(HeartbeatRequest, {"identifier": "h", "captured_at": "2026-11-27T22:00:00Z"})
    with pytest.raises(ValidationError):
        beat.identifier = "other"  # type: ignore[misc]


def test_null_wake_options_mean_defaults() -> None:
    """wake_options: null is the same as no wake options."""
    slot = parse(Slot, slot_with(wake_options=None))
    assert slot.wake_options.override_message is None


# -- times -------------------------------------------------------------------------------


def test_times_serialise_as_rfc3339_utc_with_z() -> None:
    """Every time on the wire is RFC 3339 in UTC with a Z suffix, whatever its input offset."""
    slot = parse(Slot, slot_with(scheduled_at="2026-11-28T00:30:00+02:00"))
    assert slot.to_wire()["scheduled_at"] == "2026-11-27T22:30:00Z"
    beat = HeartbeatRequest(
        identifier="h",
        captured_at=datetime(2026, 11, 27, 17, 0, tzinfo=timezone(timedelta(hours=-5))),
    )
    assert beat.to_wire()["captured_at"] == "2026-11-27T22:00:00Z"
    update = parse(
        SlotUpdate,
        {
            "identifier": "h",
            "status": "completed",
            "attempt": 1,
            "occurred_at": "2026-11-27T22:05:00.25Z",
        },
    )
    assert update.to_wire()["occurred_at"] == "2026-11-27T22:05:00.250000Z"


def test_slot_wire_form_is_stable() -> None:
    """Slot.to_wire is the protocol's JSON, field for field, also inside a heartbeat
    response; the journal reads it back with from_stored to an equal slot."""
    slot = parse(Slot, slot_with(scheduled_at="2026-11-28T00:30:00+02:00"))
    assert json.dumps(slot.to_wire()) == (
        '{"id": "s-18", "agent_id": "bob", "title": "Daily report", '
        '"prompt_text": "Write today\'s report", "scheduled_at": "2026-11-27T22:30:00Z", '
        '"wake_options": {"override_message": null}}'
    )
    response = HeartbeatResponse(slots_to_fire=[slot], restart_pending=True)
    assert response.to_wire() == {"slots_to_fire": [slot.to_wire()], "restart_pending": True}
    loud = parse(Slot, slot_with(wake_options={"override_message": "Now!"}))
    for one in (slot, loud, parse(Slot, slot_with(scheduled_at=..., title=...))):
        assert Slot.from_stored(one.to_wire()) == one


def test_default_wake_options_are_shared() -> None:
    """Slots without an override share one WakeOptions, parsed or read back."""
    slot = parse(Slot, slot_with(wake_options=None))
    assert slot.wake_options is DEFAULT_WAKE_OPTIONS
    assert parse(Slot, GOOD_SLOT).wake_options is DEFAULT_WAKE_OPTIONS
    assert Slot.from_stored(slot.to_wire()).wake_options is DEFAULT_WAKE_OPTIONS
    assert Slot(id="a", agent_id="b").wake_options is DEFAULT_WAKE_OPTIONS


def test_naive_scheduled_at_is_taken_as_utc() -> None:
    """A naive scheduled_at is UTC (the protocol only speaks UTC)."""
    slot = parse(Slot, slot_with(scheduled_at="2026-11-27T22:00:00"))
    assert slot.scheduled_at == datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    assert slot.to_wire()["scheduled_at"] == "2026-11-27T22:00:00Z"


def test_format_time_and_utcnow() -> None:
    """format_time writes Z for aware and naive times; utcnow is aware UTC."""
    assert format_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    aware = datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(aware) == "2026-01-02T03:04:05Z"
    assert utcnow().utcoffset() == timedelta(0)


def test_absent_time_serialises_as_null() -> None:
    """An optional time left out is null on the wire, not a string."""
    assert parse(Slot, slot_with(scheduled_at=...)).to_wire()["scheduled_at"] is None


# -- wake message ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wake_options": {"override_message": "Override!"}}, "Override!"),
        ({}, "Write today's report"),
        ({"prompt_text": None}, "[calendar] slot s-18: Daily report"),
        (
            {"prompt_text": "", "wake_options": {"override_message": ""}},
            "[calendar] slot s-18: Daily report",
        ),
        ({"prompt_text": None, "title": None}, "[calendar] slot s-18"),
    ],
    ids=["override", "prompt", "default", "empty-strings-fall-through", "no-title"],
)
def test_wake_message_rules(changes: dict[str, Any], message: str) -> None:
    """override_message, else prompt_text, else '[calendar] slot <id>: <title>'."""
    assert parse(Slot, slot_with(**changes)).wake_message() == message


def test_wake_source_names_the_slot() -> None:
    """The wake source is calendar:slot-<id>, which hosts may dedupe on."""
    assert parse(Slot, GOOD_SLOT).source == "calendar:slot-s-18"


# -- heartbeat responses -----------------------------------------------------------------


def test_heartbeat_response_one_bad_slot_does_not_drop_others() -> None:
    """Each slot is validated alone: bad ones are reported, good ones kept in order."""
    data = {
        "slots_to_fire": [
            slot_with(id="a"),
            slot_with(id="b", agent_id=...),
            "junk",
            slot_with(id="x" * 300),
            slot_with(id="c", unknown="ignored"),
        ],
        "restart_pending": True,
    }
    response, rejected = parse_heartbeat_response(data)
    assert [s.id for s in response.slots_to_fire] == ["a", "c"]
    assert response.restart_pending is True
    assert [(r.index, r.slot_id) for r in rejected] == [(1, "b"), (2, None), (3, "x" * 300)]
    assert rejected[0].error.startswith("slots_to_fire[1].agent_id: ")
    assert rejected[2].error.startswith("slots_to_fire[3].id: ")


def test_heartbeat_response_rejected_slot_with_non_string_id() -> None:
    """A rejected slot whose id is not a string is reported without an id."""
    _, rejected = parse_heartbeat_response({"slots_to_fire": [{"id": 7, "agent_id": "a"}]})
    assert [(r.index, r.slot_id) for r in rejected] == [(0, None)]


@pytest.mark.parametrize(
    "data", [{}, {"slots_to_fire": None}, {"slots_to_fire": [], "restart_pending": False}]
)
def test_heartbeat_response_empty_forms(data: dict[str, Any]) -> None:
    """No slots, null slots and an empty list all mean nothing to fire."""
    response, rejected = parse_heartbeat_response(data)
    assert response == HeartbeatResponse()
    assert rejected == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "(body)"),
        ("{}", "(body)"),
        ({"slots_to_fire": {"id": "a"}}, "slots_to_fire"),
        ({"slots_to_fire": [], "restart_pending": "yes"}, "restart_pending"),
    ],
    ids=["list-body", "string-body", "slots-not-list", "restart-not-bool"],
)
def test_heartbeat_response_bad_envelope_fails_the_beat(data: Any, field: str) -> None:
    """A malformed envelope raises InvalidInputError for the whole beat."""
    with pytest.raises(InvalidInputError) as info:
        parse_heartbeat_response(data)
    assert info.value.field == field


def test_heartbeat_request_defaults_and_wire_shape() -> None:
    """A heartbeat carries plugin info, agents and active slots in the protocol's shape."""
    beat = HeartbeatRequest(
        identifier="host-a",
        captured_at=datetime(2026, 11, 27, 22, 0, tzinfo=UTC),
        agents=[AgentReport(id="alice", model="claude-x", status=AgentStatus.idle)],
        active_slots=[
            ActiveSlotReport(id="s-17", agent_id="alice", state=SlotState.in_progress, attempt=1)
        ],
    )
    assert beat.to_wire() == {
        "identifier": "host-a",
        "plugin_info": {"name": "calsched", "version": __version__},
        "captured_at": "2026-11-27T22:00:00Z",
        "agents": [{"id": "alice", "model": "claude-x", "status": "idle"}],
        "active_slots": [{"id": "s-17", "agent_id": "alice", "state": "in_progress", "attempt": 1}],
    }
    assert AgentReport(id="x").status is AgentStatus.unknown


def test_the_version_is_written_in_one_place() -> None:
    """PluginInfo reports the package's version, which is pyproject.toml's."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert __version__ == declared
    assert PluginInfo().version == declared


# -- enums and journal types --------------------------------------------------------------


def test_state_sets_partition_the_states() -> None:
    """Terminal and active states partition SlotState; current and reported are as documented."""
    assert {SlotState.completed, SlotState.aborted} == TERMINAL_STATES
    assert set(SlotState) == ACTIVE_STATES | TERMINAL_STATES
    assert not ACTIVE_STATES & TERMINAL_STATES
    assert {SlotState.dispatching, SlotState.in_progress, SlotState.paused} == CURRENT_STATES
    assert {
        SlotState.in_progress,
        SlotState.paused,
        SlotState.completed,
        SlotState.aborted,
    } == REPORTED_STATES
    assert [s for s in SlotState if s.terminal] == [SlotState.completed, SlotState.aborted]
