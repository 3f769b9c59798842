"""The lease: one holder per identifier, fenced by an epoch, with a death lock beside it.

A daemon holds its identifier's row in ``leases`` (host, pid, a random instance id, an
epoch, an expiry) for as long as it runs. Three mechanisms, each for its own failure:

- The **death lock** tells a dead holder from a live one at once: an OS file lock on
  ``<db file>.<digest>.lock`` for SQLite, a session advisory lock on a dedicated
  connection for PostgreSQL. The system releases both when the process (or its
  connection) dies, so a restart after ``kill -9`` takes over without waiting.
- The **expiry** is for a holder that is alive but silent (SIGSTOP, a partition): it
  holds the death lock and renews nothing; once ``expires_at`` passes another process
  takes over without the lock, and keeps trying to get it afterwards.
- The **epoch** is the fencing token: every acquisition adds one, and every journal write
  transaction checks (:class:`Fence`), in that transaction, that the row still carries
  the writer's epoch. An old holder that wakes up has its writes refused.

The row's ``locked`` column says whether its holder also holds the death lock. A free
lock only proves the holder dead when the row says the holder had it: a holder that took
over by expiry runs without it until the silent one is gone.

Times come from each host's clock. A skew moves the expiry (a takeover comes early or
late) but never lets two holders write: the epoch check is in the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, bindparam, event, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from calsched.errors import JournalError, LeaseHeldError, LeaseLostError
from calsched.journal.engine import describe_error, driver_execute, reading, writing
from calsched.journal.schema import leases
from calsched.model import format_time, utcnow

__all__ = [
    "AdvisoryLock",
    "DeathLock",
    "Fence",
    "FileLock",
    "Holder",
    "Lease",
    "bound_idle_transactions",
    "death_lock_for",
    "live_holders",
    "read_holder",
]

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Holder:
    """The lease row of one identifier, as read."""

    identifier: str
    epoch: int
    instance: str
    host: str
    pid: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    locked: bool

    def live(self, now: datetime) -> bool:
        """Whether the lease has not yet expired at ``now``."""
        return self.expires_at > now

    def held_error(self) -> LeaseHeldError:
        """The one-line refusal naming this holder."""
        since = format_time(self.acquired_at.replace(microsecond=0))  # a line for people
        return LeaseHeldError(self.identifier, self.host, self.pid, since, self.epoch)

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready, for the status page."""
        return {
            "host": self.host,
            "pid": self.pid,
            "instance": self.instance,
            "epoch": self.epoch,
            "since": format_time(self.acquired_at),
            "renewed_at": format_time(self.renewed_at),
            "expires_at": format_time(self.expires_at),
            "locked": self.locked,
        }


def read_holder(conn: Connection, identifier: str, *, for_update: bool = False) -> Holder | None:
    """The lease row of ``identifier`` (locked for the transaction with ``for_update``)."""
    stmt = select(leases).where(leases.c.identifier == identifier)
    if for_update:
        stmt = stmt.with_for_update()  # SQLite ignores it: BEGIN IMMEDIATE serialises
    row = conn.execute(stmt).mappings().first()
    return None if row is None else Holder(**row)


def live_holders(engine: Engine, *, clock: Clock = utcnow) -> list[Holder]:
    """Every identifier's holder that is alive as far as this process can tell: its
    lease unexpired, and its death lock held (or not held by it in the first place).

    For an offline command that changes the whole database (``db upgrade``). Nothing
    when the schema has no ``leases`` table yet.
    """
    from sqlalchemy import inspect

    with reading(engine, "lease") as conn:
        if not inspect(conn).has_table("leases"):
            return []
        rows = [Holder(**row) for row in conn.execute(select(leases)).mappings()]
    now = clock()
    alive: list[Holder] = []
    for held in rows:
        if not held.live(now):
            continue
        lock = death_lock_for(engine, held.identifier) if held.locked else None
        if lock is not None and lock.try_acquire():
            lock.release()  # free: the holder died
            continue
        alive.append(held)
    return alive


# -- the death lock ----------------------------------------------------------------------


class DeathLock(Protocol):
    """A lock the system releases when its holder dies."""

    @property
    def held(self) -> bool:
        """Whether this process holds it now."""
        ...

    def try_acquire(self) -> bool:
        """Take it if it is free (never waits); return whether it is held now."""
        ...

    def release(self) -> None:
        """Give it up (nothing if not held)."""
        ...


def _digest(text_: str) -> bytes:
    return hashlib.blake2b(text_.encode(), digest_size=8, person=b"calsched-lease").digest()


class FileLock:
    """``flock`` on a file beside the SQLite database, one per identifier (mode 0600)."""

    def __init__(self, database: Path, identifier: str) -> None:
        self.path = database.with_name(f"{database.name}.{_digest(identifier).hex()}.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if free; ``False`` if another process has it."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open the lease lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot lock the lease lock file: {exc.strerror}") from None
        self._fd = fd
        return True

    def release(self) -> None:
        """Unlock and close (the file stays: removing it would race a new locker)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection kept for the process's life.

    The key is derived from the schema and the identifier, so identifiers (and test
    schemas) sharing one database never share a key in practice.
    """

    def __init__(self, engine: Engine, identifier: str) -> None:
        self._engine = engine
        self._identifier = identifier
        self._conn: Connection | None = None
        self._key: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._conn is not None

    def try_acquire(self) -> bool:
        """Take the lock if free; ``False`` if another session has it."""
        if self._conn is not None:
            return True
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            raise JournalError(f"lease lock failed: {describe_error(exc)}") from None
        try:
            if self._key is None:
                schema = conn.execute(text("SELECT current_schema()")).scalar_one()
                digest = _digest(f"{schema}\x00{self._identifier}")
                self._key = int.from_bytes(digest, "big", signed=True)
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}
            ).scalar_one()
        except SQLAlchemyError as exc:
            conn.close()
            raise JournalError(f"lease lock failed: {describe_error(exc)}") from None
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        """Unlock and give the connection back (dropped, never reused with the lock)."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(SQLAlchemyError):
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        with contextlib.suppress(SQLAlchemyError):
            conn.invalidate()  # if the unlock failed, closing the session releases it
        conn.close()


def death_lock_for(engine: Engine, identifier: str) -> DeathLock | None:
    """The death lock for ``engine``'s database; ``None`` for an in-memory SQLite one
    (one process only: nothing to lease)."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:") or str(url.database).startswith("file:"):
            return None
        return FileLock(Path(url.database).resolve(), identifier)
    if url.get_backend_name() == "postgresql":
        return AdvisoryLock(engine, identifier)
    raise JournalError(f"leases need SQLite or PostgreSQL, not {url.get_backend_name()}")


def bound_idle_transactions(engine: Engine, seconds: float) -> None:
    """On PostgreSQL, end any session of ``engine`` idle inside a transaction this long.

    A holder stopped (SIGSTOP) in the middle of a write transaction would otherwise keep
    its row locks, the lease row's among them, and no takeover could ever commit. Every
    journal transaction is far shorter than a lease time. Pooled connections opened
    before are dropped, so every later one has the bound. Nothing on SQLite, where a
    process stopped inside a write transaction holds the database's write lock until it
    resumes or dies: no bound exists there (docs/operations.md).
    """
    if engine.url.get_backend_name() != "postgresql":
        return
    millis = max(1000, int(seconds * 1000))

    @event.listens_for(engine, "connect")
    def _bound(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {millis}")
        finally:
            cursor.close()
        dbapi_connection.commit()

    engine.dispose()


# -- the fence ---------------------------------------------------------------------------


class Fence:
    """The epoch check every journal write transaction runs first.

    One small statement per transaction (so per group of the group writer): the lease
    row's epoch, read ``FOR SHARE`` on PostgreSQL so a takeover's update waits for this
    transaction to commit or roll back (SQLite's ``BEGIN IMMEDIATE`` already excludes
    it). Once refused, every later write is refused without asking: the process is
    stepping down.
    """

    def __init__(self, engine: Engine, identifier: str, epoch: int) -> None:
        self.identifier = identifier
        self.epoch = epoch
        #: Set once a write was refused or a renewal failed; never cleared.
        self.lost: str | None = None
        #: Write transactions refused, for metrics and the step-down log line.
        self.refused = 0
        self._on_lost: list[Callable[[str], None]] = []
        stmt = (
            select(leases.c.epoch)
            .where(leases.c.identifier == bindparam("identifier"))
            .with_for_update(read=True)
        )
        compiled = stmt.compile(dialect=engine.dialect)
        self._sql = str(compiled)
        self._params: Any = (identifier,) if compiled.positional else {"identifier": identifier}

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(why)`` (from whichever thread noticed) when the lease is lost."""
        self._on_lost.append(callback)

    def lose(self, why: str) -> None:
        """Mark the lease lost (a failed renewal fails closed); idempotent."""
        if self.lost is not None:
            return
        self.lost = why
        for callback in self._on_lost:
            callback(why)

    def check(self, conn: Connection) -> None:
        """Raise :class:`LeaseLostError` unless the row still carries this epoch."""
        if self.lost is None:
            cursor = driver_execute(conn, self._sql, self._params)
            try:
                row = cursor.fetchone()
            finally:
                cursor.close()
            found = None if row is None else int(row[0])
            if found != self.epoch:
                self.lose("the lease was released" if found is None else f"epoch {found} took over")
        if self.lost is not None:
            self.refused += 1
            raise LeaseLostError(self.identifier, self.epoch, self.lost)


# -- the lease ---------------------------------------------------------------------------


class Lease:
    """This process's claim on one identifier: acquire, renew, release.

    ``lock`` is the death lock (:func:`death_lock_for`); with ``None`` only the expiry
    protects the identifier (tests of the rules themselves).
    """

    def __init__(
        self,
        engine: Engine,
        identifier: str,
        *,
        ttl_s: float,
        lock: DeathLock | None,
        clock: Clock = utcnow,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("the lease time must be positive")
        self.engine = engine
        self.identifier = identifier
        self.ttl = timedelta(seconds=ttl_s)
        self.lock = lock
        self._clock = clock
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.instance = secrets.token_hex(16)
        #: The epoch held, once acquired (``None`` before and after).
        self.epoch: int | None = None
        #: How the last acquisition went: "new", "dead_holder" or "expired" (which a
        #: graceful release is: it sets the expiry to now).
        self.takeover: str | None = None
        #: Renewals that succeeded, for metrics.
        self.renewals = 0
        self.fence: Fence | None = None
        #: The row as this process last wrote it (acquisition or renewal).
        self.held: Holder | None = None

    @classmethod
    def guarded(cls, engine: Engine, identifier: str, *, ttl_s: float) -> Lease:
        """The lease a process takes on ``identifier``, with the death lock its database
        gives (:func:`death_lock_for`): what the daemon and offline writers hold."""
        return cls(engine, identifier, ttl_s=ttl_s, lock=death_lock_for(engine, identifier))

    @property
    def locked(self) -> bool:
        """Whether this process holds the death lock."""
        return self.lock is not None and self.lock.held

    def read(self) -> Holder | None:
        """The identifier's lease row now, whoever holds it."""
        with reading(self.engine, "lease") as conn:
            return read_holder(conn, self.identifier)

    def acquire(self) -> Holder:
        """Take the lease, or raise :class:`LeaseHeldError` naming the live holder.

        The death lock is free and the row says its holder had it: that holder is dead,
        take over at once. The row has expired: take over (with or without the lock).
        Otherwise refuse, and give back the death lock if this call took it.
        """
        had_lock = self.locked
        got_lock = self.lock.try_acquire() if self.lock is not None else False
        try:
            held = self._acquire_row(got_lock)
        except BaseException:
            if got_lock and not had_lock and self.lock is not None:
                self.lock.release()
            raise
        self.fence = Fence(self.engine, self.identifier, held.epoch)
        self.held = held
        return held

    def _acquire_row(self, got_lock: bool) -> Holder:
        for attempt in range(2):  # a racing first insert on PostgreSQL: read it again
            try:
                with writing(self.engine, "lease") as conn:
                    return self._decide(conn, got_lock)
            except JournalError as exc:
                if attempt or "conflicted" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def _decide(self, conn: Connection, got_lock: bool) -> Holder:
        now = self._clock()
        found = read_holder(conn, self.identifier, for_update=True)
        if found is None:
            why, epoch = "new", 1
        elif got_lock and found.locked:
            why, epoch = "dead_holder", found.epoch + 1
        elif not found.live(now):
            why, epoch = "expired", found.epoch + 1
        else:
            raise found.held_error()
        held = Holder(
            identifier=self.identifier,
            epoch=epoch,
            instance=self.instance,
            host=self.host,
            pid=self.pid,
            acquired_at=now,
            renewed_at=now,
            expires_at=now + self.ttl,
            locked=got_lock,
        )
        values = asdict(held)
        if found is None:
            conn.execute(insert(leases).values(**values))
        else:
            del values["identifier"]
            conn.execute(
                update(leases).where(leases.c.identifier == self.identifier).values(**values)
            )
        self.epoch = epoch
        self.takeover = why
        return held

    def renew(self) -> Holder:
        """Push the expiry one lease time ahead; try for the death lock if not held.

        Raises :class:`LeaseLostError` when the row is no longer this process's (the
        update checks epoch and instance), :class:`JournalError` when the database
        cannot be reached: the caller decides how long it may keep trying.
        """
        if self.epoch is None:
            raise LeaseLostError(self.identifier, 0, "the lease was never acquired")
        fresh_lock = False
        if self.lock is not None and not self.lock.held:
            fresh_lock = self.lock.try_acquire()
        now = self._clock()
        values = {"renewed_at": now, "expires_at": now + self.ttl, "locked": self.locked}
        try:
            with writing(self.engine, "lease") as conn:
                done = conn.execute(
                    update(leases)
                    .where(
                        leases.c.identifier == self.identifier,
                        leases.c.epoch == self.epoch,
                        leases.c.instance == self.instance,
                    )
                    .values(**values)
                ).rowcount
                held = read_holder(conn, self.identifier) if done == 1 else None
        except JournalError:
            if fresh_lock and self.lock is not None:
                self.lock.release()
            raise
        if held is None:
            if self.lock is not None:
                self.lock.release()
            raise LeaseLostError(self.identifier, self.epoch, "another process holds it now")
        self.renewals += 1
        self.held = held
        return held

    def release(self) -> None:
        """Give the lease up (its expiry set to now) and the death lock, so the next
        start takes over at once. Never raises: a release that cannot reach the database
        leaves the row to expire."""
        epoch, self.epoch = self.epoch, None
        try:
            if epoch is not None:
                with writing(self.engine, "lease") as conn:
                    conn.execute(
                        update(leases)
                        .where(
                            leases.c.identifier == self.identifier,
                            leases.c.epoch == epoch,
                            leases.c.instance == self.instance,
                        )
                        .values(expires_at=self._clock(), locked=False)
                    )
        except JournalError:
            pass
        finally:
            if self.lock is not None:
                self.lock.release()
