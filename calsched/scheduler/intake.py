"""The intake planner: which listed slots a heartbeat brings in, as transition requests.

Pure: plain data in, requests out, no I/O and no asyncio, so every rule is tested on its
own (``tests/test_intake.py``). The rules (DESIGN.md, "Scheduler rules"):

- a listed slot that is live here is skipped, and so is one the journal has live (a
  concurrent intake holds it);
- a listed slot that ended here is a new attempt only when the beat that lists it was sent
  after the backend learnt of the end; otherwise the listing is stale;
- a slot later than the misfire grace after its ``scheduled_at`` is received and aborted
  at once (``missed: late by …``), never woken;
- under the ``replace`` policy the newest slot of each agent wins: every older slot of
  that agent is aborted (``superseded by <id>``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from calsched.journal import TransitionRequest
from calsched.model import Actor, Slot, SlotView, Trigger
from calsched.settings import QueuePolicy

__all__ = ["Known", "fresh_slots", "human", "lateness", "plan_intake"]


@dataclass(frozen=True, slots=True)
class Known:
    """What the journal knows of a listed slot that is not live here."""

    #: The slot's current attempt has ended (completed or aborted).
    ended: bool
    #: When the backend learnt of that end (``None``: not yet).
    settled_at: datetime | None = None


def fresh_slots(listed: Iterable[Slot], live: Callable[[str], bool]) -> list[Slot]:
    """The listed slots, each once (first listing wins), that are not live here."""
    unique: dict[str, Slot] = {}
    for slot in listed:
        unique.setdefault(slot.id, slot)
    return [s for s in unique.values() if not live(s.id)]


def plan_intake(
    fresh: Sequence[Slot],
    known: Mapping[str, Known],
    of_agent: Callable[[str], Sequence[SlotView]],
    *,
    sent_at: datetime,
    now: datetime,
    policy: QueuePolicy,
    misfire_grace_s: float | None,
) -> list[TransitionRequest]:
    """The requests that take ``fresh`` in, in order (``of_agent``: an agent's live slots)."""
    requests: list[TransitionRequest] = []
    runnable: dict[str, list[str]] = {}  # agent -> new slots that will want a wake
    for slot in fresh:
        seen = known.get(slot.id)
        if seen is not None and not seen.ended:
            continue  # journaled but not in the live view: a concurrent intake has it
        # Re-listed before the backend heard the end, or by a beat that crossed the
        # acknowledgement: stale. Only a beat sent after the ack starts a new attempt.
        if seen is not None and (seen.settled_at is None or sent_at <= seen.settled_at):
            continue
        requests.append(TransitionRequest(slot.id, Trigger.receive, Actor.scheduler, slot=slot))
        late = lateness(slot, now, misfire_grace_s)
        if late is not None:
            reason = f"missed: late by {human(late)}"
            requests.append(
                TransitionRequest(slot.id, Trigger.abort, Actor.scheduler, reason=reason)
            )
        else:
            runnable.setdefault(slot.agent_id, []).append(slot.id)
    if policy is QueuePolicy.replace:
        requests.extend(_supersede(runnable, of_agent))
    return requests


def lateness(slot: Slot, now: datetime, grace_s: float | None) -> timedelta | None:
    """How late ``slot`` is, if later than the grace after its ``scheduled_at``."""
    if grace_s is None or slot.scheduled_at is None:
        return None
    late = now - slot.scheduled_at
    return late if late.total_seconds() > grace_s else None


def _supersede(
    runnable: Mapping[str, list[str]], of_agent: Callable[[str], Sequence[SlotView]]
) -> list[TransitionRequest]:
    out: list[TransitionRequest] = []
    for agent_id, new_ids in runnable.items():
        reason = f"superseded by {new_ids[-1]}"
        for view in of_agent(agent_id):
            out.append(
                TransitionRequest(
                    view.slot_id,
                    Trigger.abort,
                    Actor.scheduler,
                    reason=reason,
                    attempt=view.attempt,
                )
            )
        # Several new slots for one agent in one beat: only the last listed survives.
        for slot_id in new_ids[:-1]:
            out.append(TransitionRequest(slot_id, Trigger.abort, Actor.scheduler, reason=reason))
    return out


def human(delta: timedelta) -> str:
    """A duration as ``42s``, ``5m03s`` or ``3h07m``."""
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
