"""Retention: the events of slots that ended long ago exported, then deleted
(``calsched journal prune``), the hash chain still verifiable across the cut.

A slot is pruned whole (its events of every attempt, its outbox rows, its projection
row) when it ended (``completed`` or ``aborted``) before the given time and none of its
outbox rows is still waiting (undelivered or dead-lettered): a live slot, or one the
backend has not heard the end of, is kept, and counted.

Pruned slots' events sit between kept ones in the chain. For every run of removed events
the prune writes a ``chain_checkpoints`` row with the hash of the run's last event: the
kept event after the run chains from it, so verify checks every kept event against its
own original predecessor hash and still catches tampering after a prune
(``docs/integrity.md``). The export (JSON Lines, gzip: each line an event's canonical
content and its ``chain``) is written, fsynced and closed before anything is deleted; the
deletes then go in transactions of :attr:`Retention.batch_slots` slots, each leaving the
journal verifiable if the next never comes (a checkpoint for every removed event whose
successor is still there; the ones a later batch made unnecessary go in the last one,
with the ``operator_actions`` row that records the prune).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, select

from calsched._durable import fsync_dir
from calsched.journal.chain import content_of
from calsched.journal.engine import reading, writing
from calsched.journal.schema import chain_checkpoints, events, operator_actions, outbox, slots
from calsched.model import TERMINAL_STATES, Actor, format_time, utcnow

__all__ = ["PRUNE", "PrunePlan", "PruneReport", "Retention"]

#: The ``action`` of the ``operator_actions`` row a prune leaves.
PRUNE = "journal_prune"

#: Called with the number of events (while exporting) or slots (while deleting) done.
Progress = Callable[[int], None]

_TERMINAL = sorted(s.value for s in TERMINAL_STATES)
_CHUNK = 500  # IN lists within every driver's parameter limit


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """Which slots a prune before ``before`` removes, and how many it keeps and why."""

    before: datetime
    slots: tuple[str, ...]
    events: int
    #: Not ended yet (pending, dispatching, in progress, paused).
    kept_not_ended: int
    #: Ended before ``before``, with an outbox row still waiting (undelivered or dead).
    kept_pending_outbox: int
    #: Ended at or after ``before``.
    kept_recent: int


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune did."""

    plan: PrunePlan
    events_removed: int
    checkpoints: int
    export: Path | None
    export_bytes: int | None
    export_sha256: str | None


@dataclass(slots=True)
class _Cut:
    """A checkpoint to write: the run of removed events ending at ``through``."""

    batch: int
    from_seq: int
    through_seq: int
    chain: str
    count: int
    #: Needed only until the batch that removes the next event commits.
    interim: bool = False


@dataclass(slots=True)
class _Pass:
    """What the export pass learnt: each pruned slot's batch, and the cuts to record."""

    batches: dict[str, int] = field(default_factory=dict)
    cuts: list[_Cut] = field(default_factory=list)
    events: int = 0


class Retention:
    """Prunes one identifier's ended slots; writes under ``check`` (the lease's fence)."""

    def __init__(
        self,
        engine: Engine,
        identifier: str,
        *,
        check: Callable[[Connection], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        batch_slots: int = 1000,
    ) -> None:
        self.engine = engine
        self.identifier = identifier
        self.batch_slots = max(1, batch_slots)
        self._check = check
        self._clock = clock

    def plan(self, before: datetime) -> PrunePlan:
        """The slots that ended before ``before`` with nothing left to tell the backend,
        the number of their events, and how many slots are kept, by reason."""
        waiting = exists().where(
            outbox.c.identifier == slots.c.identifier,
            outbox.c.slot_id == slots.c.slot_id,
            outbox.c.delivered_at.is_(None),
        )
        stmt = select(slots.c.slot_id, slots.c.state, slots.c.resolved_at, waiting).where(
            slots.c.identifier == self.identifier
        )
        chosen: list[str] = []
        live = pending = recent = 0
        with reading(self.engine, "journal") as conn:
            for slot_id, state, resolved_at, held in conn.execute(stmt):
                if state not in _TERMINAL:
                    live += 1
                elif resolved_at is None or resolved_at >= before:
                    recent += 1
                elif held:
                    pending += 1
                else:
                    chosen.append(slot_id)
            count = 0
            for start in range(0, len(chosen), _CHUNK):
                count += int(
                    conn.execute(
                        select(func.count())
                        .select_from(events)
                        .where(
                            events.c.identifier == self.identifier,
                            events.c.slot_id.in_(chosen[start : start + _CHUNK]),
                        )
                    ).scalar_one()
                )
        return PrunePlan(before, tuple(sorted(chosen)), count, live, pending, recent)

    def prune(
        self, plan: PrunePlan, *, export: Path | None, progress: Progress | None = None
    ) -> PruneReport:
        """Export the plan's events to ``export`` (``None``: no copy), then delete them.

        Run it holding the identifier's lease (``check`` fences each transaction): the
        plan is only right while nobody else writes this identifier.
        """
        chosen = set(plan.slots)
        if not chosen:
            return PruneReport(plan, 0, 0, None, None, None)
        learnt, size, digest = self._export(chosen, export, progress)
        now = self._clock()
        batches: list[list[str]] = [[] for _ in range(max(learnt.batches.values()) + 1)]
        for slot_id, batch in learnt.batches.items():
            batches[batch].append(slot_id)
        name = export.name if export is not None else None
        for index, batch_slots in enumerate(batches):
            cuts = [c for c in learnt.cuts if c.batch == index]
            with writing(self.engine, "journal", check=self._check) as conn:
                self._delete(conn, batch_slots)
                if cuts:
                    conn.execute(
                        insert(chain_checkpoints),
                        [self._checkpoint(c, now, name, digest) for c in cuts],
                    )
            if progress is not None:
                progress(len(batch_slots))
        interim = [c.through_seq for c in learnt.cuts if c.interim]
        with writing(self.engine, "journal", check=self._check) as conn:
            for start in range(0, len(interim), _CHUNK):
                conn.execute(
                    delete(chain_checkpoints).where(
                        chain_checkpoints.c.identifier == self.identifier,
                        chain_checkpoints.c.through_seq.in_(interim[start : start + _CHUNK]),
                    )
                )
            conn.execute(
                insert(operator_actions).values(
                    identifier=self.identifier,
                    action=PRUNE,
                    actor=Actor.operator.value,
                    outbox_id=None,
                    slot_id=None,
                    reason=_reason(plan, learnt.events, name, digest),
                    recorded_at=now,
                )
            )
        kept = len(learnt.cuts) - len(interim)
        return PruneReport(plan, learnt.events, kept, export, size, digest)

    # -- the export pass ------------------------------------------------------------------

    def _export(
        self, chosen: set[str], export: Path | None, progress: Progress | None
    ) -> tuple[_Pass, int | None, str | None]:
        if export is None:
            return self._walk(chosen, None, progress), None, None
        partial = export.with_name(export.name + ".partial")
        # The export holds the journal's content: readable by its owner alone, like the
        # journal itself (the umask can only take bits away, so the mode is set exactly).
        fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
                learnt = self._walk(chosen, packed.write, progress)
            raw.flush()
            os.fsync(raw.fileno())  # on disk before a single row is deleted
        os.replace(partial, export)
        fsync_dir(export.parent)  # the rename too, before a row is deleted
        digest = hashlib.sha256()
        with export.open("rb") as done:
            while block := done.read(1 << 20):
                digest.update(block)
        return learnt, export.stat().st_size, digest.hexdigest()

    def _walk(
        self, chosen: set[str], out: Callable[[bytes], object] | None, progress: Progress | None
    ) -> _Pass:
        """Stream the identifier's events in seq order: export the chosen ones, give each
        chosen slot its batch (in order of its first event), and find the cuts."""
        learnt = _Pass()
        batches = learnt.batches
        run_from: int | None = None
        run_count = 0
        last: tuple[int, str, int] | None = None  # the previous event, if removed
        stmt = select(events).where(events.c.identifier == self.identifier).order_by(events.c.seq)
        unreported = 0
        with reading(self.engine, "journal") as conn:
            result = conn.execute(stmt.execution_options(yield_per=2000)).mappings()
            try:
                for row in result:
                    seq, slot_id = int(row["seq"]), row["slot_id"]
                    removed = slot_id in chosen
                    batch = -1
                    if removed:
                        batch = batches.setdefault(slot_id, len(batches) // self.batch_slots)
                    if last is not None and (not removed or batch != last[2]):
                        # The event before this one goes, and this one stays (or goes
                        # later): this one chains from a checkpoint meanwhile.
                        assert run_from is not None
                        learnt.cuts.append(
                            _Cut(last[2], run_from, last[0], last[1], run_count, removed)
                        )
                    if not removed:
                        run_from, run_count, last = None, 0, None
                        continue
                    if run_from is None:
                        run_from = seq
                    run_count += 1
                    last = (seq, str(row["chain"]), batch)
                    learnt.events += 1
                    if out is not None:
                        line = {**content_of(row), "chain": row["chain"]}
                        out(json.dumps(line, sort_keys=True).encode() + b"\n")
                    unreported += 1
                    if progress is not None and unreported >= 2000:
                        progress(unreported)
                        unreported = 0
            finally:
                result.close()
        if last is not None:  # the newest events go: the next append chains from the cut
            assert run_from is not None
            learnt.cuts.append(_Cut(last[2], run_from, last[0], last[1], run_count))
        if progress is not None and unreported:
            progress(unreported)
        return learnt

    # -- the deletes ----------------------------------------------------------------------

    def _delete(self, conn: Connection, slot_ids: Sequence[str]) -> None:
        for start in range(0, len(slot_ids), _CHUNK):
            chunk = slot_ids[start : start + _CHUNK]
            # Outbox rows first: each points at its event.
            for table in (outbox, events, slots):
                conn.execute(
                    delete(table).where(
                        and_(table.c.identifier == self.identifier, table.c.slot_id.in_(chunk))
                    )
                )

    def _checkpoint(
        self, cut: _Cut, now: datetime, name: str | None, digest: str | None
    ) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "from_seq": cut.from_seq,
            "through_seq": cut.through_seq,
            "chain": cut.chain,
            "events_removed": cut.count,
            "pruned_at": now,
            "export_file": name,
            "export_sha256": digest,
        }


def _reason(plan: PrunePlan, removed: int, name: str | None, digest: str | None) -> str:
    copy = f"exported to {name} (sha256 {digest})" if name else "not exported (--no-export)"
    return (
        f"pruned {len(plan.slots)} slot(s) ended before {format_time(plan.before)}: "
        f"{removed} event(s), {copy}"
    )
