"""The ``Idempotency-Key`` of a tool call (step 5 of :mod:`calsched.control`).

A repeat by the same agent with the same key answers as the first call did and changes
nothing; the same key on a different request is 422 ``invalid``. The answer itself is
kept by the scheduler in the transaction of the change
(:mod:`calsched.journal.idempotency`); this module only fences concurrent repeats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse, Response

from calsched.control.answers import ApiError, slot_answer
from calsched.control.body import B
from calsched.journal.idempotency import MAX_KEY_CHARS, ToolKey
from calsched.model import Actor, SlotView
from calsched.ports import SlotTools


@dataclass(frozen=True, slots=True)
class Call:
    """Who a tool call is for, who makes it, and its key (if it carries one)."""

    agent_id: str
    actor: Actor
    key: ToolKey | None


class _KeyLock:
    """One key's lock and how many calls hold or wait for it (dropped at zero)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyedCalls:
    """Runs tool calls at most once per ``(agent, Idempotency-Key)``."""

    def __init__(self, tools: SlotTools) -> None:
        self.tools = tools
        self._locks: dict[tuple[str, str], _KeyLock] = {}

    async def once(
        self,
        call: Call,
        raw_key: str | None,
        route: str,
        body: B,
        tool: Callable[[Call, B], Awaitable[SlotView]],
    ) -> Response:
        """Run ``tool`` for ``call`` and ``body``, or answer a repeat of its key as first.

        The key's fingerprint is the route, the actor and the parsed body. A per-key lock
        keeps two concurrent repeats from both deciding (the second waits, then finds the
        first's answer). A call that was refused changed nothing and keeps no answer.
        """
        if raw_key is None:
            return slot_answer(await tool(call, body))
        if not 1 <= len(raw_key) <= MAX_KEY_CHARS:
            raise ApiError(422, "invalid", f"Idempotency-Key: 1 to {MAX_KEY_CHARS} characters")
        key = ToolKey.of(raw_key, route, call.actor.value, body.model_dump(mode="json"))
        keyed = Call(call.agent_id, call.actor, key)
        slot = (call.agent_id, raw_key)
        lock = self._locks.setdefault(slot, _KeyLock())
        lock.users += 1
        try:
            async with lock.lock:
                kept = await self.tools.recall(call.agent_id, raw_key)
                if kept is not None:
                    if kept.fingerprint != key.fingerprint:
                        raise ApiError(
                            422,
                            "invalid",
                            "Idempotency-Key: already used for a different request",
                        )
                    return JSONResponse(kept.body, status_code=kept.status)
                return slot_answer(await tool(keyed, body))
        finally:
            lock.users -= 1
            if lock.users == 0:
                del self._locks[slot]
