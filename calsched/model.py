"""Value types shared by every layer, and validation of wire input.

Parsing untrusted JSON goes through :func:`parse`, which turns a pydantic
``ValidationError`` into :class:`~calsched.errors.InvalidInputError` naming the first bad
field. Most wire types are pydantic models. :class:`Slot` and :class:`WakeOptions` are
plain frozen dataclasses instead, because the journal and the scheduler's live view hold
one per slot: pydantic validates them at the wire edge (:func:`parse`, with the field
rules in their annotations), and the journal reads its own rows back with the trusted
``from_stored``. Journal types (:class:`Event`, :class:`SlotView`) are frozen dataclasses
built by our own code on the hot path.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
)

from calsched._version import __version__
from calsched.errors import InvalidInputError

__all__ = [
    "ACTIVE_STATES",
    "CURRENT_STATES",
    "DEFAULT_WAKE_OPTIONS",
    "MAX_ID_CHARS",
    "REPORTED_STATES",
    "TERMINAL_STATES",
    "ActiveSlotReport",
    "Actor",
    "AgentReport",
    "AgentStatus",
    "Event",
    "FieldError",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Id",
    "PluginInfo",
    "RejectedSlot",
    "Slot",
    "SlotState",
    "SlotUpdate",
    "SlotView",
    "Trigger",
    "WakeOptions",
    "WireModel",
    "first_error",
    "format_time",
    "parse",
    "parse_heartbeat_response",
    "utcnow",
]

#: The longest id the protocol allows (slot, agent and host ids: 1 to 256 characters);
#: the journal's id columns are this wide.
MAX_ID_CHARS = 256
#: An id as the protocol allows it: 1 to :data:`MAX_ID_CHARS` characters.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, as the protocol writes times."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SlotState(enum.StrEnum):
    """Where a slot is in its lifecycle (DESIGN.md, "Slot lifecycle")."""

    pending = "pending"
    dispatching = "dispatching"
    in_progress = "in_progress"
    paused = "paused"
    completed = "completed"
    aborted = "aborted"

    @property
    def terminal(self) -> bool:
        """True for ``completed`` and ``aborted``: no trigger but ``receive`` leaves them."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({SlotState.completed, SlotState.aborted})
ACTIVE_STATES = frozenset(set(SlotState) - TERMINAL_STATES)
#: States in which a slot is its agent's *current* slot (at most one per agent).
CURRENT_STATES = frozenset({SlotState.dispatching, SlotState.in_progress, SlotState.paused})
#: States the backend hears of (protocol section 1, ``status``).
REPORTED_STATES = frozenset(
    {SlotState.in_progress, SlotState.paused, SlotState.completed, SlotState.aborted}
)


class Trigger(enum.StrEnum):
    """The verbs that move a slot; one journal event per fired trigger."""

    receive = "receive"
    dispatch = "dispatch"
    woke = "woke"
    wake_failed = "wake_failed"
    pause = "pause"
    resume = "resume"
    complete = "complete"
    abort = "abort"
    reconcile = "reconcile"


class Actor(enum.StrEnum):
    """Who caused a transition; every event records one."""

    scheduler = "scheduler"
    agent = "agent"
    backend = "backend"
    operator = "operator"
    recovery = "recovery"


class AgentStatus(enum.StrEnum):
    """An agent's status as the heartbeat reports it."""

    idle = "idle"
    busy = "busy"
    offline = "offline"
    unknown = "unknown"


class WireModel(BaseModel):
    """Base of wire types: unknown fields are ignored, instances are immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, times in RFC 3339 UTC."""
        return self.model_dump(mode="json")


class _TimeFields(WireModel):
    """Mixin: serialises every datetime field the protocol's way (``...Z``)."""

    @field_serializer("*", when_used="json", check_fields=False)
    def _times(self, value: Any) -> Any:
        return format_time(value) if isinstance(value, datetime) else value


@dataclass(frozen=True, slots=True, kw_only=True)
class WakeOptions:
    """Per-slot wake options sent by the backend.

    A plain frozen dataclass, like :class:`Slot`: validated once at the wire edge by
    :func:`parse`, never again on the journal's hot path.
    """

    # Read by pydantic when it validates this type at the wire edge (see ``parse``).
    __pydantic_config__ = ConfigDict(extra="ignore")

    override_message: str | None = None

    @classmethod
    def from_stored(cls, data: Mapping[str, Any] | None) -> WakeOptions:
        """Trusted: options as :meth:`to_wire` wrote them (no validation)."""
        message = data.get("override_message") if data else None
        return DEFAULT_WAKE_OPTIONS if message is None else cls(override_message=message)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict."""
        return {"override_message": self.override_message}


#: The options of nearly every slot: one shared instance instead of one per slot.
DEFAULT_WAKE_OPTIONS = WakeOptions()


def _aware(value: datetime | None) -> datetime | None:
    # Naive times are taken as UTC: the protocol only speaks UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _null_options(value: Any) -> Any:
    return {} if value is None else value


def _shared_options(value: WakeOptions) -> WakeOptions:
    return DEFAULT_WAKE_OPTIONS if value.override_message is None else value


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """A unit of work the backend asks calsched to give an agent.

    A plain frozen dataclass: the journal holds one per live slot, so it carries no
    per-instance validation state. Untrusted input goes through ``parse(Slot, data)``
    (pydantic, with the field rules below); rows the journal wrote itself come back
    through :meth:`from_stored`.
    """

    __pydantic_config__ = ConfigDict(extra="ignore")

    id: Id
    agent_id: Id
    title: str | None = None
    prompt_text: str | None = None
    scheduled_at: Annotated[datetime | None, AfterValidator(_aware)] = None
    wake_options: Annotated[
        WakeOptions, BeforeValidator(_null_options), AfterValidator(_shared_options)
    ] = DEFAULT_WAKE_OPTIONS

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Slot:
        """Trusted: a slot as :meth:`to_wire` wrote it into the journal (no validation).

        The agent id is interned: an agent's slots then share one string.
        """
        at = data.get("scheduled_at")
        return cls(
            id=data["id"],
            agent_id=sys.intern(data["agent_id"]),
            title=data.get("title"),
            prompt_text=data.get("prompt_text"),
            # to_wire wrote RFC 3339 with "Z", which fromisoformat reads back as UTC.
            scheduled_at=datetime.fromisoformat(at) if at is not None else None,
            wake_options=WakeOptions.from_stored(data.get("wake_options")),
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, times in RFC 3339 UTC."""
        at = self.scheduled_at
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "title": self.title,
            "prompt_text": self.prompt_text,
            "scheduled_at": format_time(at) if at is not None else None,
            "wake_options": self.wake_options.to_wire(),
        }

    def wake_message(self) -> str:
        """What the agent is told: override message, else prompt, else a default line."""
        if self.wake_options.override_message:
            return self.wake_options.override_message
        if self.prompt_text:
            return self.prompt_text
        # No title: no dangling ": " after the id.
        return f"[calendar] slot {self.id}" + (f": {self.title}" if self.title else "")

    @property
    def source(self) -> str:
        """The wake source hosts may dedupe on."""
        return f"calendar:slot-{self.id}"


class PluginInfo(WireModel):
    """Who is heartbeating."""

    name: str = "calsched"
    # The installed package's version (pyproject.toml), the one place it is written.
    version: str = __version__


class AgentReport(WireModel):
    """One agent as listed in a heartbeat."""

    id: Id
    model: str | None = None
    status: AgentStatus = AgentStatus.unknown


class ActiveSlotReport(WireModel):
    """One non-terminal slot as listed in a heartbeat's ``active_slots``."""

    id: Id
    agent_id: Id
    state: SlotState
    attempt: int = Field(ge=1)


class HeartbeatRequest(_TimeFields):
    """Body of ``POST /v1/heartbeat``."""

    identifier: Id
    plugin_info: PluginInfo = Field(default_factory=PluginInfo)
    captured_at: datetime
    agents: list[AgentReport] = Field(default_factory=list)
    active_slots: list[ActiveSlotReport] = Field(default_factory=list)


class HeartbeatResponse(WireModel):
    """The backend's answer to a heartbeat (only the slots that validated)."""

    slots_to_fire: list[Slot] = Field(default_factory=list)
    restart_pending: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, each slot as :meth:`Slot.to_wire` writes it."""
        return {
            "slots_to_fire": [slot.to_wire() for slot in self.slots_to_fire],
            "restart_pending": self.restart_pending,
        }


class SlotUpdate(_TimeFields):
    """Body of ``POST /v1/slots/{slot_id}/status``."""

    identifier: Id
    status: SlotState
    attempt: int = Field(ge=1)
    summary: str | None = None
    reason: str | None = None
    occurred_at: datetime

    @field_validator("status")
    @classmethod
    def _reported(cls, value: SlotState) -> SlotState:
        if value not in REPORTED_STATES:
            raise ValueError(f"must be one of {sorted(s.value for s in REPORTED_STATES)}")
        return value


@dataclass(frozen=True, slots=True)
class RejectedSlot:
    """A slot of a heartbeat response that failed validation and was skipped."""

    index: int
    slot_id: str | None
    error: str


T = TypeVar("T")


# One validator per type, built when first needed (building one costs milliseconds).
_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(model: type[Any]) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return adapter


@dataclass(frozen=True, slots=True)
class FieldError:
    """The first error of a pydantic ``ValidationError``, ready to say in one line.

    Every place that reports invalid input (wire parsing, the configuration, a host's
    agent list) words it from this, so the wording is decided once.
    """

    #: Where the bad value is, as pydantic gives it (empty for the whole input).
    loc: tuple[int | str, ...]
    #: pydantic's error type, e.g. ``"missing"`` or ``"extra_forbidden"``.
    kind: str
    #: What is wrong, without pydantic's ``"Value error, "`` style prefixes.
    message: str

    @property
    def field(self) -> str:
        """The location dotted (``wake_options.override_message``); ``""`` for none."""
        return ".".join(str(part) for part in self.loc)


def first_error(exc: ValidationError) -> FieldError:
    """The first error of ``exc`` (pydantic lists them in input order)."""
    first = exc.errors()[0]
    msg = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "dataclass_type":
        # Say it as pydantic says it for models, as these messages always read.
        msg = f"Input should be a valid dictionary or instance of {first['ctx']['class_name']}"
    return FieldError(loc=tuple(first["loc"]), kind=first["type"], message=msg)


def parse(model: type[T], data: Any) -> T:
    """Validate ``data`` as ``model``; raise :class:`InvalidInputError` naming the field."""
    try:
        return cast(T, _adapter(model).validate_python(data))
    except ValidationError as exc:
        error = first_error(exc)
        raise InvalidInputError(error.field or "(body)", error.message) from None


def parse_heartbeat_response(data: Any) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
    """Validate a heartbeat response slot by slot: one bad slot does not drop the others.

    The envelope itself must be an object with a list (or no) ``slots_to_fire``; otherwise
    :class:`InvalidInputError` is raised and the whole beat fails.
    """
    if not isinstance(data, Mapping):
        raise InvalidInputError("(body)", "must be a JSON object")
    raw_slots = data.get("slots_to_fire") or []
    if not isinstance(raw_slots, list):
        raise InvalidInputError("slots_to_fire", "must be a list")
    restart = data.get("restart_pending", False)
    if not isinstance(restart, bool):
        raise InvalidInputError("restart_pending", "must be a boolean")
    slot_adapter = _adapter(Slot)
    good: list[Slot] = []
    rejected: list[RejectedSlot] = []
    for index, raw in enumerate(raw_slots):
        try:
            good.append(slot_adapter.validate_python(raw))
        except ValidationError as exc:
            error = first_error(exc)
            slot_id = raw.get("id") if isinstance(raw, Mapping) else None
            rejected.append(
                RejectedSlot(
                    index=index,
                    slot_id=slot_id if isinstance(slot_id, str) else None,
                    error=f"slots_to_fire[{index}].{error.field or '(body)'}: {error.message}",
                )
            )
    return HeartbeatResponse(slots_to_fire=good, restart_pending=restart), rejected


@dataclass(frozen=True, slots=True)
class Event:
    """One journal row: a fired trigger, who fired it, and the state it moved between.

    ``seq`` is assigned by the database on append and is ``None`` before that.
    ``state_from`` is ``None`` for the ``receive`` of a slot never seen before.
    """

    event_id: str
    identifier: str
    slot_id: str
    attempt: int
    agent_id: str
    kind: Trigger
    actor: Actor
    state_from: SlotState | None
    state_to: SlotState
    recorded_at: datetime
    summary: str | None = None
    reason: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class SlotView:
    """The projection of one slot: what the fold of its events gives.

    ``slot`` is the slot as last received (it carries the wake message), so a restart can
    re-dispatch without asking the backend again.
    """

    identifier: str
    slot_id: str
    agent_id: str
    state: SlotState
    attempt: int
    slot: Slot
    received_at: datetime
    started_at: datetime | None
    updated_at: datetime
    resolved_at: datetime | None
    summary: str | None
    reason: str | None
    last_seq: int

    @property
    def terminal(self) -> bool:
        """True once the slot's current attempt is completed or aborted."""
        return self.state in TERMINAL_STATES
