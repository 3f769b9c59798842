"""What the demo shows: the journal read back in SQL, the crash check, and the screen.

The history is read from the ``slot_timeline`` view, as an auditor would (SQLAlchemy Core,
no ORM, no calsched internals). :class:`DemoView` is either a rich live view (active
slots from ``/v1/status``, the latest journal rows) or plain lines for pipes and tests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, column, func, select, table

from calsched.demo.scenario import IDENTIFIER
from calsched.journal.schema import outbox, slots

__all__ = [
    "DemoResult",
    "DemoView",
    "HistoryRow",
    "Mark",
    "OutboxTally",
    "Restoration",
    "compare_active",
    "describe_active",
    "history_table",
    "outbox_tally",
    "read_history",
    "slots_ended",
    "summary_line",
]

_history_view = table(
    "slot_timeline",
    column("seq"),
    # ISO 8601 text with a Z on every database (the view formats it).
    column("recorded_at"),
    column("identifier"),
    column("slot_id"),
    column("attempt"),
    column("agent_id"),
    column("kind"),
    column("actor"),
    column("state_from"),
    column("state_to"),
    column("summary"),
    column("reason"),
)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One row of the ``slot_timeline`` view."""

    seq: int
    recorded_at: datetime
    slot_id: str
    attempt: int
    agent_id: str
    kind: str
    actor: str
    state_from: str | None
    state_to: str
    summary: str | None
    reason: str | None

    @property
    def note(self) -> str:
        """The summary or the reason, whichever the event carries."""
        return self.summary or self.reason or ""

    @property
    def change(self) -> str:
        """``from -> to``, with ``-`` for a slot seen for the first time."""
        return f"{self.state_from or '-'} -> {self.state_to}"


def read_history(engine: Engine, after_seq: int = 0) -> list[HistoryRow]:
    """The demo identifier's ``slot_timeline`` rows with ``seq > after_seq``, in order."""
    v = _history_view.c
    query = (
        select(_history_view).where(v.identifier == IDENTIFIER, v.seq > after_seq).order_by(v.seq)
    )
    with engine.connect() as conn:
        return [
            HistoryRow(
                seq=row.seq,
                recorded_at=datetime.fromisoformat(row.recorded_at),
                slot_id=row.slot_id,
                attempt=row.attempt,
                agent_id=row.agent_id,
                kind=row.kind,
                actor=row.actor,
                state_from=row.state_from,
                state_to=row.state_to,
                summary=row.summary,
                reason=row.reason,
            )
            for row in conn.execute(query)
        ]


def slots_ended(engine: Engine) -> int:
    """How many of the demo identifier's slots are completed or aborted."""
    query = (
        select(func.count())
        .select_from(slots)
        .where(slots.c.identifier == IDENTIFIER, slots.c.state.in_(("completed", "aborted")))
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


@dataclass(frozen=True, slots=True)
class OutboxTally:
    """The demo identifier's outbox rows by fate."""

    delivered: int
    waiting: int
    dead: int


def outbox_tally(engine: Engine) -> OutboxTally:
    """Count the outbox rows delivered, still waiting, and dead-lettered."""
    o = outbox.c
    mine = o.identifier == IDENTIFIER
    with engine.connect() as conn:

        def count(*where: Any) -> int:
            query = select(func.count()).select_from(outbox).where(mine, *where)
            return int(conn.execute(query).scalar_one())

        return OutboxTally(
            delivered=count(o.delivered_at.is_not(None)),
            waiting=count(o.delivered_at.is_(None), o.dead_at.is_(None)),
            dead=count(o.dead_at.is_not(None)),
        )


# -- the crash check ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restoration:
    """The active slots (``id -> state``) before the kill and after the restart.

    A slot came back when it is active after the restart and, if it was ``in_progress`` or
    ``paused``, in the same state (``pending``/``dispatching`` ones may move on: the
    restarted daemon wakes them). Slots new after the restart do not count.
    """

    before: dict[str, str]
    after: dict[str, str]
    missing: list[str]

    @property
    def ok(self) -> bool:
        """True when something was active and all of it came back."""
        return bool(self.before) and not self.missing


def compare_active(before: Mapping[str, str], after: Mapping[str, str]) -> Restoration:
    """Compare two ``slot id -> state`` maps taken from ``/v1/status``."""
    settled = {"in_progress", "paused"}
    missing = [
        slot_id
        for slot_id, state in sorted(before.items())
        if slot_id not in after or (state in settled and after[slot_id] != state)
    ]
    return Restoration(before=dict(before), after=dict(after), missing=missing)


def describe_active(active: Sequence[Mapping[str, Any]]) -> str:
    """``s-04 (dave) paused, s-06 (bob) in_progress`` from ``/v1/status``'s ``active``."""
    if not active:
        return "(none)"
    return ", ".join(
        f"{e['slot']['id']} ({e['slot']['agent_id']}) {e['state']}"
        for e in sorted(active, key=lambda e: str(e["slot"]["id"]))
    )


# -- the end of the run ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    """Something the demo did that the journal cannot show (the kill, the restart)."""

    at: datetime
    kind: str
    text: str


@dataclass(slots=True)
class DemoResult:
    """What the demo saw; :func:`summary_line` makes its last line."""

    slots: int = 0
    completed: int = 0
    aborted: int = 0
    receipts: int = 0
    restarts: int = 0
    restoration: Restoration | None = None
    elapsed_s: float = 0.0
    workdir: Path | None = None
    history: list[HistoryRow] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)


def summary_line(result: DemoResult) -> str:
    """Slots completed/aborted, backend receipts, restarts and slots restored, time taken."""
    restored = ""
    if result.restoration is not None:
        n = len(result.restoration.before)
        restored = f" ({n - len(result.restoration.missing)}/{n} active slots restored)"
    plural = "" if result.restarts == 1 else "s"
    return (
        f"{result.slots} slots: {result.completed} completed, {result.aborted} aborted; "
        f"{result.receipts} backend receipts; {result.restarts} hard restart{plural}"
        f"{restored}; {result.elapsed_s:.1f}s"
    )


def rel(at: datetime, t0: datetime) -> str:
    """``at`` as seconds since ``t0``: ``+3.25s``."""
    return f"{(at - t0).total_seconds():+.2f}s"


_Justify = Literal["left", "right"]
_HISTORY_COLUMNS: tuple[tuple[str, _Justify], ...] = (
    ("seq", "right"),
    ("time", "right"),
    ("slot", "left"),
    ("att", "right"),
    ("agent", "left"),
    ("kind", "left"),
    ("actor", "left"),
    ("from -> to", "left"),
    ("summary / reason", "left"),
)


def history_table(rows: Sequence[HistoryRow], t0: datetime, marks: Sequence[Mark] = ()) -> Table:
    """The rows as a rich table, times since ``t0``, the demo's marks in time order."""
    out = Table(
        title="slot history (SELECT * FROM slot_timeline ORDER BY seq)", title_justify="left"
    )
    for name, justify in _HISTORY_COLUMNS:
        out.add_column(name, justify=justify, overflow="fold")
    left = sorted(marks, key=lambda m: m.at)

    def add_mark(mark: Mark) -> None:
        style = "bold red"
        out.add_row(
            "", rel(mark.at, t0), "", "", "", Text(mark.kind, style), "demo", "", Text(mark.text)
        )

    for row in rows:
        while left and left[0].at <= row.recorded_at:
            add_mark(left.pop(0))
        out.add_row(
            str(row.seq),
            rel(row.recorded_at, t0),
            row.slot_id,
            str(row.attempt),
            row.agent_id,
            row.kind,
            row.actor,
            Text(row.change, style=_STATE_STYLE.get(row.state_to, "")),
            row.note,
        )
    for mark in left:
        add_mark(mark)
    return out


_STATE_STYLE = {
    "pending": "dim",
    "dispatching": "yellow",
    "in_progress": "green",
    "paused": "magenta",
    "completed": "bold green",
    "aborted": "red",
}


# -- the screen --------------------------------------------------------------------------


class DemoView:
    """A rich live view, or plain lines; the demo talks to nothing else on screen.

    In the live view, narration scrolls above a panel showing the daemon, its active
    slots (``/v1/status``) and the latest journal rows. In plain mode, narration and
    journal rows are lines, held until :meth:`refresh` and then printed in time order (a
    wake's narration and the journal row of that wake arrive by different paths);
    ``detail`` lines (the agents' tool calls, which the journal rows already show) are
    left out.
    """

    def __init__(self, console: Console, *, live: bool, t0: datetime) -> None:
        self.console = console
        self.t0 = t0
        self.daemon = "starting"
        self.active: list[dict[str, Any]] = []
        self.recent: deque[HistoryRow] = deque(maxlen=10)
        self._live = Live(console=console, auto_refresh=False, transient=True) if live else None
        self._pending: list[tuple[datetime, str]] = []

    def __enter__(self) -> DemoView:
        if self._live is not None:
            self._live.update(self.render())
            self._live.start(refresh=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()
        self._flush()

    def _line(self, at: datetime, text: str) -> str:
        return f"{rel(at, self.t0):>8}  {text}"

    def say(self, text: str, *, detail: bool = False) -> None:
        """One narration line, stamped with the time since the start."""
        now = datetime.now(UTC)
        if self._live is not None:
            self._live.console.print(self._line(now, text), markup=False, highlight=False)
        elif not detail:
            self._pending.append((now, self._line(now, text)))

    def journal(self, rows: Sequence[HistoryRow]) -> None:
        """New journal rows: into the live panel, or lines for the next :meth:`refresh`."""
        self.recent.extend(rows)
        if self._live is not None:
            return
        for row in rows:
            note = f"  {row.note}" if row.note else ""
            text = (
                f"journal #{row.seq} {row.slot_id} ({row.agent_id}) {row.kind}: "
                f"{row.change} by {row.actor}{note}"
            )
            self._pending.append((row.recorded_at, self._line(row.recorded_at, text)))

    def refresh(self) -> None:
        """Redraw the live panel, or print the lines held so far in time order."""
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
        self._flush()

    def _flush(self) -> None:
        for _, line in sorted(self._pending, key=lambda item: item[0]):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self._pending.clear()

    def render(self) -> RenderableType:
        """The live panel: the daemon, its active slots, the latest journal rows."""
        active = Table(title="active slots (GET /v1/status)", title_justify="left", expand=True)
        for name in ("slot", "agent", "state", "attempt", "last change"):
            active.add_column(name)
        for entry in self.active:
            changed = entry.get("last_change")
            since = rel(datetime.fromisoformat(changed), self.t0) if changed else ""
            state = str(entry["state"])
            active.add_row(
                str(entry["slot"]["id"]),
                str(entry["slot"]["agent_id"]),
                Text(state, style=_STATE_STYLE.get(state, "")),
                str(entry["attempt"]),
                since,
            )
        recent = Table(title="journal (slot_timeline)", title_justify="left", expand=True)
        for name in ("seq", "time", "slot", "agent", "kind", "actor", "from -> to"):
            recent.add_column(name)
        for row in self.recent:
            recent.add_row(
                str(row.seq),
                rel(row.recorded_at, self.t0),
                row.slot_id,
                row.agent_id,
                row.kind,
                row.actor,
                Text(row.change, style=_STATE_STYLE.get(row.state_to, "")),
            )
        header = Text.assemble(
            ("calsched demo", "bold"),
            f"  {rel(datetime.now(UTC), self.t0)}  daemon: ",
            (self.daemon, "bold red" if "KILL" in self.daemon else "bold"),
        )
        return Panel(Group(header, active, recent), border_style="blue")
