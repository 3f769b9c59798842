"""The hash chain over the journal: every event's hash covers its predecessor's.

Each ``events`` row carries ``chain``: the SHA-256 (hex) of the previous chain hash of
the same identifier followed by the row's canonical content (:func:`canonical`), so an
edited, deleted, inserted or reordered row no longer chains. An identifier's first event
chains from :data:`GENESIS`. A prune removes events of ended slots (which may sit between
kept ones); for each run of removed events it leaves a ``chain_checkpoints`` row with the
hash of the run's last event, and the event after the run chains from that
(:mod:`calsched.journal.retention`). ``docs/integrity.md`` says what this proves and what
it cannot.

:class:`ChainHead` keeps the identifier's newest hash in memory for the write path: read
once, advanced by every append, believed only once the transaction that appended it has
committed (:func:`~calsched.journal.engine.after_commit`), read again after anything
else. :func:`verify_chain` walks the chain and names the first event where it breaks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, func, select

from calsched.journal.engine import after_commit
from calsched.journal.schema import chain_checkpoints, events

__all__ = [
    "CONTENT_COLUMNS",
    "GENESIS",
    "ChainBreak",
    "ChainHead",
    "ChainReport",
    "canonical",
    "content_of",
    "link",
    "read_head",
    "verify_chain",
]

#: What an identifier's first event chains from.
GENESIS = "0" * 64

#: Every column that carries meaning: all of ``events`` but ``chain`` itself. ``seq`` is
#: among them, so a row moved to another place in the log no longer matches its hash.
CONTENT_COLUMNS = tuple(c.name for c in events.columns if c.name != "chain")

#: Called with the number of events read since its last call.
Progress = Callable[[int], None]


def _time(value: datetime) -> str:
    # Always six digits of microseconds: isoformat() drops them when they are zero.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def content_of(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The canonical content of an ``events`` row (its :data:`CONTENT_COLUMNS`, the time
    as ISO 8601 UTC with microseconds and ``Z``), as a dict (an export's line has these)."""
    out = {name: row[name] for name in CONTENT_COLUMNS}
    out["recorded_at"] = _time(row["recorded_at"])
    return out


def canonical(row: Mapping[Any, Any]) -> bytes:
    """The bytes an event's hash covers: :func:`content_of` as JSON, keys sorted, no
    whitespace, ASCII only (``null`` for ``None``), the payload's keys sorted too."""
    text = json.dumps(content_of(row), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def link(previous: str, row: Mapping[Any, Any]) -> str:
    """The chain hash of ``row``: SHA-256 over ``previous`` (hex, as ASCII) followed by
    :func:`canonical` of the row."""
    digest = hashlib.sha256(previous.encode("ascii"))
    digest.update(canonical(row))
    return digest.hexdigest()


def read_head(conn: Connection, identifier: str) -> str:
    """The hash the identifier's next event chains from: its newest event's, or the
    checkpoint of a prune that removed its newest events, or :data:`GENESIS`."""
    newest = conn.execute(
        select(events.c.seq, events.c.chain)
        .where(events.c.identifier == identifier)
        .order_by(events.c.seq.desc())
        .limit(1)
    ).first()
    cut = conn.execute(
        select(chain_checkpoints.c.through_seq, chain_checkpoints.c.chain)
        .where(chain_checkpoints.c.identifier == identifier)
        .order_by(chain_checkpoints.c.through_seq.desc())
        .limit(1)
    ).first()
    best = max((r for r in (newest, cut) if r is not None), key=lambda r: r[0], default=None)
    if best is None:
        return GENESIS
    return str(best[1]) if best[1] is not None else GENESIS


class ChainHead:
    """The newest chain hash of one identifier, as the journal's write path knows it.

    The journal's writer is the only one appending for its identifier (the lease sees to
    that), so after one read the head is known. An append inside a transaction advances
    it for that transaction only; the new head is believed once the transaction committed.
    A transaction that appended and never said it committed (rolled back, failed, or not
    opened by :func:`~calsched.journal.engine.writing`) makes the next append read the
    head from the database again.
    """

    def __init__(self, identifier: str) -> None:
        self.identifier = identifier
        self._committed: str | None = None
        #: (the transaction that appended, the head it appended).
        self._pending: tuple[object, str] | None = None

    def forget(self) -> None:
        """Read the head again before the next append (a new lease, a prune)."""
        self._committed = None
        self._pending = None

    def previous(self, conn: Connection) -> str:
        """The hash the next event appended in ``conn``'s transaction chains from."""
        pending = self._pending
        if pending is not None:
            if pending[0] is conn.get_transaction():
                return pending[1]
            # An earlier transaction appended and never said it committed.
            self.forget()
        if self._committed is None:
            self._committed = read_head(conn, self.identifier)
        return self._committed

    def advanced(self, conn: Connection, head: str) -> None:
        """Events chaining up to ``head`` were appended in ``conn``'s transaction."""
        tx = conn.get_transaction()
        first = self._pending is None or self._pending[0] is not tx
        self._pending = (tx, head)
        if first:
            after_commit(conn, partial(self._committed_in, tx))

    def _committed_in(self, tx: object) -> None:
        pending = self._pending
        if pending is not None and pending[0] is tx:
            self._committed, self._pending = pending[1], None


# -- verifying ---------------------------------------------------------------------------


#: What a break says, by kind.
NO_HASH = "has no chain hash"
CONTENT = "hash does not match its content"
GAP = "seq gap: events before it are missing"
UNCHAINED = "does not chain from the previous event"
INSERTED = "is not part of the chain: the event after it chains from the one before it"
ANCHOR = "the chain's head is not the anchor"


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place the chain of an identifier breaks."""

    identifier: str
    seq: int | None
    event_id: str | None
    slot_id: str | None
    what: str

    def __str__(self) -> str:
        if self.seq is None:
            return f"{self.identifier}: {self.what}"
        where = f"event seq {self.seq} ({self.event_id}, slot {self.slot_id})"
        return f"{self.identifier}: {where} {self.what}"


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What :func:`verify_chain` found: events checked, checkpoints crossed, the head
    hash, and the first break (``None``: the chain holds)."""

    events: int
    checkpoints: int
    head: str
    broken: ChainBreak | None


@dataclass(slots=True)
class _Item:
    """One step of the walk: an event row, or a checkpoint standing for removed events."""

    seq: int
    chain: str | None
    row: Mapping[str, Any] | None = None

    def matches(self, previous: str) -> bool:
        return self.row is not None and self.chain == link(previous, self.row)


def _walk(rows: Iterable[Any], cuts: list[Any]) -> Iterator[_Item]:
    """Events and checkpoints merged in seq order (a checkpoint at its ``through_seq``)."""
    index = 0
    for row in rows:
        seq = int(row["seq"])
        while index < len(cuts) and int(cuts[index].through_seq) < seq:
            cut = cuts[index]
            yield _Item(int(cut.through_seq), str(cut.chain))
            index += 1
        yield _Item(seq, row["chain"], row)
    for cut in cuts[index:]:
        yield _Item(int(cut.through_seq), str(cut.chain))


def verify_chain(
    conn: Connection,
    identifier: str,
    *,
    anchor: str | None = None,
    progress: Progress | None = None,
) -> ChainReport:
    """Walk ``identifier``'s chain in seq order; the first break, if any.

    With ``anchor`` (a head hash kept from an earlier verify), the head must equal it or
    contain it: an anchor is met when it is the head, or the hash of an event (or
    checkpoint) the walk passed, so a chain that only grew since still verifies.
    """
    stmt = select(events).where(events.c.identifier == identifier).order_by(events.c.seq)
    result = conn.execute(stmt.execution_options(yield_per=2000)).mappings()
    try:
        # Read after the events' cursor opened: a prune committing meanwhile can only add
        # a checkpoint for an event the walk still sees, which changes nothing.
        cuts = list(
            conn.execute(
                select(chain_checkpoints.c.through_seq, chain_checkpoints.c.chain)
                .where(chain_checkpoints.c.identifier == identifier)
                .order_by(chain_checkpoints.c.through_seq)
            )
        )
        return _verify(conn, identifier, _walk(result, cuts), len(cuts), anchor, progress)
    finally:
        result.close()  # a break leaves rows unread: PostgreSQL's server cursor must go


def _verify(
    conn: Connection,
    identifier: str,
    items: Iterator[_Item],
    checkpoints: int,
    anchor: str | None,
    progress: Progress | None,
) -> ChainReport:
    previous, before = GENESIS, None  # the head so far, and the one before it
    last: _Item | None = None
    count = unreported = 0
    anchored = anchor is None or anchor == GENESIS
    broken: ChainBreak | None = None
    for item in items:
        if item.row is None:  # a checkpoint: the next event chains from the removed one
            before, previous, last = None, str(item.chain), item
        elif item.matches(previous):
            before, previous, last = previous, str(item.chain), item
            count += 1
            unreported += 1
            if progress is not None and unreported >= 2000:
                progress(unreported)
                unreported = 0
        else:
            broken = _diagnose(conn, identifier, item, last, before, next(items, None))
            break
        if not anchored and previous == anchor:
            anchored = True
    if progress is not None and unreported:
        progress(unreported)
    if broken is None and not anchored:
        broken = ChainBreak(identifier, None, None, None, f"{ANCHOR} (nor any hash in it)")
    return ChainReport(count, checkpoints, previous, broken)


def _diagnose(
    conn: Connection,
    identifier: str,
    item: _Item,
    last: _Item | None,
    before: str | None,
    following: _Item | None,
) -> ChainBreak:
    """Why ``item`` does not chain from ``last`` (``before`` chains into ``last``)."""

    def at(found: _Item, what: str) -> ChainBreak:
        assert found.row is not None
        r = found.row
        return ChainBreak(identifier, int(r["seq"]), r["event_id"], r["slot_id"], what)

    if item.chain is None:
        return at(item, NO_HASH)
    if last is not None and last.row is not None and before is not None and item.matches(before):
        return at(last, INSERTED)  # the event before this one does not belong here
    low = last.seq if last is not None else 0
    between = conn.execute(
        select(func.count()).select_from(events).where(events.c.seq > low, events.c.seq < item.seq)
    ).scalar_one()
    expected = item.seq - low - 1
    if int(between) < expected:
        return at(item, f"{GAP} (seq {low + 1}..{item.seq - 1}: {expected - int(between)} gone)")
    if following is None or (following.row is not None and following.matches(str(item.chain))):
        # What follows was built on this row's hash as it stands: its content changed.
        return at(item, CONTENT)
    return at(item, UNCHAINED)
