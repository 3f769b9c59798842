"""embedded_backend: a LocalCalendar served in-process over the real protocol."""

from __future__ import annotations

from calsched.backend.calendar import CalendarStatus, LocalCalendar
from calsched.backend.embedded import EMBEDDED_URL, embedded_backend
from calsched.journal import Journal
from calsched.model import HeartbeatRequest, SlotState, SlotUpdate, utcnow


async def test_a_due_slot_fires_and_its_status_is_recorded(journal: Journal) -> None:
    """A heartbeat returns the calendar's due slot; a status post lands in the calendar,
    once per idempotency key; the backend names no key and no port."""
    calendar = LocalCalendar(journal.engine)
    calendar.add("s1", "bob", title="report")
    async with embedded_backend(calendar) as backend:
        assert backend.base_url == EMBEDDED_URL
        response, rejected = await backend.heartbeat(
            HeartbeatRequest(identifier="host-a", captured_at=utcnow())
        )
        assert [s.id for s in response.slots_to_fire] == ["s1"]
        assert rejected == []
        update = SlotUpdate(
            identifier="host-a", status=SlotState.completed, attempt=1, occurred_at=utcnow()
        )
        await backend.send_status("s1", update, "key-1")
        await backend.send_status("s1", update, "key-1")  # a retry: acknowledged, not repeated
    assert calendar.get("s1").status is CalendarStatus.completed
    assert len(calendar.receipts("s1")) == 1


async def test_each_backend_has_its_own_key(journal: Journal) -> None:
    """A fresh secret per backend: no two share one, and none is shown."""
    calendar = LocalCalendar(journal.engine)
    async with embedded_backend(calendar) as first, embedded_backend(calendar) as second:
        assert first._api_key != second._api_key
        assert first._api_key not in repr(first)
