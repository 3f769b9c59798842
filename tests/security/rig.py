"""A real :class:`~calsched.scheduler.Scheduler` behind the control API, for the security tests.

Three agents (alice, bob, carol) each hold an ``in_progress`` slot in a real journal; the
control API is reached in-process through httpx's ASGI transport. :meth:`ControlRig.rows`
counts every journal row, so a test can prove a refused request wrote nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy import func, select

from calsched.control import create_control_app
from calsched.journal import Journal
from calsched.journal.schema import events, outbox, slots
from calsched.model import Slot, SlotState, parse
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost
from calsched.tokens import admin_token, agent_token

SECRET = b"security-suite-secret-0123456789abcdef"
AGENTS = ("alice", "bob", "carol")
#: Every agent route, as (method, path suffix after /v1/agents/<id>/slot).
AGENT_ROUTES = (
    ("GET", ""),
    ("POST", "/complete"),
    ("POST", "/abort"),
    ("POST", "/pause"),
    ("POST", "/resume"),
)


def token_of(agent_id: str) -> str:
    """The agent token the rig's daemon secret gives ``agent_id``."""
    return agent_token(SECRET, agent_id)


ADMIN = admin_token(SECRET)


@dataclass
class ControlRig:
    """The scheduler, its journal and an HTTP client of its control API."""

    sched: Scheduler
    journal: Journal
    http: httpx.AsyncClient

    def rows(self) -> tuple[int, int, int]:
        """How many rows ``events``, ``slots`` and ``outbox`` hold."""
        with self.journal.engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (events, slots, outbox)
            )

    def states(self) -> dict[str, SlotState]:
        """Each agent's current slot state, from the scheduler's live view."""
        return {v.agent_id: v.state for v in self.sched.active()}


@asynccontextmanager
async def control_rig(db_url: str) -> AsyncIterator[ControlRig]:
    """A scheduler on ``db_url`` whose three agents are woken into ``in_progress``."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    to_fire = [parse(Slot, {"id": f"s-{a}", "agent_id": a, "title": f"{a}'s slot"}) for a in AGENTS]
    settings = SchedulerSettings(identifier="host-a")
    sched = Scheduler(settings, journal, InMemoryBackend(to_fire), InMemoryHost(AGENTS))
    try:
        await sched.recover()
        await sched.heartbeat_once()
        await sched.idle()
        assert {v.agent_id: v.state for v in sched.active()} == dict.fromkeys(
            AGENTS, SlotState.in_progress
        )
        app = create_control_app(sched, secret=SECRET)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield ControlRig(sched, journal, http)
    finally:
        await sched.stop()
        journal.close()
