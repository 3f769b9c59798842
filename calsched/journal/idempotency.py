"""Idempotency keys: the first answer to an agent's tool call, kept to answer its repeats.

A client whose call timed out cannot know whether the change happened; calling again with
the same ``Idempotency-Key`` (protocol section 2) must answer as the first call did and
change nothing. The answer is stored in the ``idempotency_keys`` table by
:meth:`IdempotencyStore.remember_in`, inside the write transaction of the change it
answers (the scheduler passes it to the group writer with the transition), so either both
commit or neither does: there is no window where the slot changed but a repeat would
change it again. Keys are scoped to (identifier, agent) and live for :data:`KEY_TTL`,
far longer than any client's retries; they survive a restart because they are rows.

Only answers of calls that changed something are kept: a refused call changed nothing,
so its repeat is simply decided again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select

from calsched.journal.engine import reading
from calsched.journal.schema import idempotency_keys
from calsched.model import utcnow

__all__ = ["KEY_TTL", "MAX_KEY_CHARS", "IdempotencyStore", "Remembered", "ToolKey"]

#: How long a key answers repeats: a day covers any client's retries and a restart.
KEY_TTL = timedelta(hours=24)
#: The protocol's limit on an ``Idempotency-Key``.
MAX_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class ToolKey:
    """A call's ``Idempotency-Key`` and the fingerprint of what it asked.

    Example: ``ToolKey.of("k-1", "complete", "agent", {"summary": "done"})``
    """

    key: str
    fingerprint: str

    @classmethod
    def of(cls, key: str, route: str, actor: str, body: dict[str, Any]) -> ToolKey:
        """The key of a call to ``route`` by ``actor`` with ``body`` (its fields, parsed)."""
        canonical = json.dumps([route, actor, body], sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass"))
        return cls(key, digest.hexdigest())


@dataclass(frozen=True, slots=True)
class Remembered:
    """The first answer given under a key, and what that call asked."""

    fingerprint: str
    status: int
    body: dict[str, Any]
    created_at: datetime


class IdempotencyStore:
    """The ``idempotency_keys`` rows of one identifier."""

    def __init__(
        self,
        engine: Engine,
        identifier: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        ttl: timedelta = KEY_TTL,
    ) -> None:
        self.engine = engine
        self.identifier = identifier
        self._clock = clock
        self.ttl = ttl

    def recall(self, agent_id: str, key: str) -> Remembered | None:
        """The answer first given to ``agent_id`` under ``key``; ``None`` if none is kept
        (never given, or older than :attr:`ttl`)."""
        t = idempotency_keys.c
        query = select(t.fingerprint, t.status, t.body, t.created_at).where(
            t.identifier == self.identifier,
            t.agent_id == agent_id,
            t.key == key,
            t.created_at > self._clock() - self.ttl,
        )
        with reading(self.engine, "journal") as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Remembered(row.fingerprint, row.status, dict(row.body), row.created_at)

    def remember_in(
        self,
        conn: Connection,
        agent_id: str,
        key: ToolKey,
        status: int,
        body: dict[str, Any],
    ) -> None:
        """Keep the answer to ``key`` inside the write transaction ``conn`` holds.

        Expired rows of any agent go first (an expired row of this very key included, so
        a key reused after a day starts afresh). A live row of the same key makes the
        insert fail, rolling the whole transaction back: a change is never made twice.
        """
        t = idempotency_keys.c
        now = self._clock()
        conn.execute(
            delete(idempotency_keys).where(
                t.identifier == self.identifier, t.created_at <= now - self.ttl
            )
        )
        conn.execute(
            insert(idempotency_keys).values(
                identifier=self.identifier,
                agent_id=agent_id,
                key=key.key,
                fingerprint=key.fingerprint,
                status=status,
                body=body,
                created_at=now,
            )
        )
