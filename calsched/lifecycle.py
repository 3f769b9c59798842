"""The slot state machine, defined once with ``transitions`` and shared by every slot.

DESIGN.md measured the pattern: one ``Machine`` with no models and
``auto_transitions=False``, fired as ``machine.events[name].trigger(cursor)`` on a tiny
object that carries only ``.state``. It costs nothing per slot (no ``add_model``, no
reference cycles) and has no callbacks, so deciding a transition has no side effects: the
journal commits the decision, and only then do effects (wakes, backend calls) happen.
Having no callbacks also makes each decision a function of (state, event) alone, so
:class:`SlotMachine` asks the machine once per pair and remembers the answer.

=============  ==========================================  ===============================
trigger        from                                        to
=============  ==========================================  ===============================
receive        (new), completed, aborted                   pending (a new attempt)
dispatch       pending                                     dispatching
woke           dispatching                                 in_progress
wake_failed    dispatching                                 aborted
pause          in_progress                                 paused
resume         paused                                      in_progress
complete       in_progress, paused                         completed
abort          pending, dispatching, in_progress, paused   aborted
reconcile      any state but the target                    the backend's terminal status
=============  ==========================================  ===============================

``reconcile`` may leave a terminal state: when the backend answers 409 because it already
holds the *other* terminal status, the backend is canonical and the journal records that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from transitions import Machine, MachineError, State

from calsched.errors import InvalidTransitionError
from calsched.model import ACTIVE_STATES, TERMINAL_STATES, Actor, SlotState, Trigger

__all__ = ["NEW", "SLOT_MACHINE", "SlotMachine", "Step"]


class _Origin(enum.Enum):
    """The pseudo-state of a slot never seen before; never stored."""

    new = "new"


#: The state a slot has before its first ``receive``.
NEW: Final = _Origin.new

_TERMINAL = sorted(TERMINAL_STATES)
_ACTIVE = sorted(ACTIVE_STATES)

# (trigger name inside the machine, sources, destination)
_TABLE: Final[list[tuple[str, list[str | enum.Enum | State], SlotState]]] = [
    ("receive", [NEW, *_TERMINAL], SlotState.pending),
    ("dispatch", [SlotState.pending], SlotState.dispatching),
    ("woke", [SlotState.dispatching], SlotState.in_progress),
    ("wake_failed", [SlotState.dispatching], SlotState.aborted),
    ("pause", [SlotState.in_progress], SlotState.paused),
    ("resume", [SlotState.paused], SlotState.in_progress),
    ("complete", [SlotState.in_progress, SlotState.paused], SlotState.completed),
    ("abort", list(_ACTIVE), SlotState.aborted),
    # reconcile has a destination chosen by the backend: one machine event per target.
    (
        "reconcile_completed",
        [s for s in SlotState if s is not SlotState.completed],
        SlotState.completed,
    ),
    ("reconcile_aborted", [s for s in SlotState if s is not SlotState.aborted], SlotState.aborted),
]


class _Cursor:
    """The only object the machine ever sees: a state and nothing else."""

    __slots__ = ("state",)

    def __init__(self, state: SlotState | _Origin) -> None:
        self.state = state


@dataclass(frozen=True, slots=True)
class Step:
    """A decided transition: what fired, who fired it, and between which states."""

    trigger: Trigger
    actor: Actor
    state_from: SlotState | None
    state_to: SlotState


class SlotMachine:
    """Decides transitions for every slot with one shared ``transitions.Machine``."""

    def __init__(self) -> None:
        self._machine = Machine(
            model=None,
            states=[NEW, *SlotState],
            initial=None,
            auto_transitions=False,
            send_event=False,
        )
        for name, sources, dest in _TABLE:
            self._machine.add_transition(name, sources, dest)
        # The machine has no callbacks, so a decision depends on (state, event) alone:
        # each one is asked of the machine once and remembered. Firing through
        # transitions costs ~80 us; the remembered answer costs a dict look-up.
        self._decided: dict[tuple[SlotState | _Origin, str], SlotState | None] = {}

    def _destination(self, state: SlotState | _Origin, name: str) -> SlotState | None:
        key = (state, name)
        try:
            return self._decided[key]
        except KeyError:
            pass
        cursor = _Cursor(state)
        try:
            self._machine.events[name].trigger(cursor)
        except MachineError:
            dest = None
        else:
            assert isinstance(cursor.state, SlotState)
            dest = cursor.state
        self._decided[key] = dest
        return dest

    def fire(
        self,
        slot_id: str,
        state: SlotState | None,
        trigger: Trigger,
        actor: Actor,
        *,
        target: SlotState | None = None,
    ) -> Step:
        """Decide ``trigger`` from ``state`` (``None`` for a new slot) without side effects.

        ``target`` is required for ``reconcile`` and must be terminal.
        Raises :class:`InvalidTransitionError` when the table does not allow it.
        """
        name = trigger.value
        if trigger is Trigger.reconcile:
            if target not in TERMINAL_STATES:
                raise InvalidTransitionError(slot_id, _label(state), "reconcile")
            assert target is not None
            name = f"reconcile_{target.value}"
        dest = self._destination(NEW if state is None else state, name)
        if dest is None:
            raise InvalidTransitionError(slot_id, _label(state), trigger.value)
        return Step(trigger=trigger, actor=actor, state_from=state, state_to=dest)


def _label(state: SlotState | None) -> str:
    return "new" if state is None else state.value


#: The one machine every slot shares.
SLOT_MACHINE: Final = SlotMachine()
