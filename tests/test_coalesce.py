"""The coalescer: items handed in one per caller, flushed in batches, outcomes per item."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from calsched.scheduler.coalesce import Coalescer, Outcome


class Refused(Exception):
    """One item's own failure."""


class Flusher:
    """Records each batch; an odd item fails alone; ``gate`` holds a flush in flight."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: list[int]) -> Sequence[Outcome[int]]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [Refused(i) if i % 2 else i * 10 for i in items]


async def test_items_handed_in_together_are_one_batch_with_their_own_outcomes() -> None:
    """Callers in one turn of the loop share a batch; each gets its own result or error."""
    flush = Flusher()
    coalesce: Coalescer[int, int] = Coalescer(flush)
    outcomes = await asyncio.gather(*(coalesce(i) for i in range(5)), return_exceptions=True)
    assert flush.batches == [[0, 1, 2, 3, 4]]
    assert [o if isinstance(o, int) else type(o) for o in outcomes] == [
        0,
        Refused,
        20,
        Refused,
        40,
    ]
    assert (coalesce.batches, coalesce.items) == (1, 5)


async def test_items_arriving_during_a_flush_go_out_together_in_the_next() -> None:
    """One batch in flight at a time: what piles up meanwhile is the next batch."""
    flush = Flusher()
    flush.gate.clear()
    coalesce: Coalescer[int, int] = Coalescer(flush)
    first = asyncio.ensure_future(coalesce(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert flush.batches == [[0]]
    later = [asyncio.ensure_future(coalesce(i)) for i in (2, 4, 6)]
    await asyncio.sleep(0)
    assert flush.batches == [[0]]  # held until the first is done
    flush.gate.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [20, 40, 60]
    assert flush.batches == [[0], [2, 4, 6]]


async def test_a_flush_that_raises_fails_its_batch_and_the_next_goes_on() -> None:
    """A broken flush is every item's error in that batch, not the coalescer's end."""
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> Sequence[Outcome[int]]:
        calls.append(items)
        if len(calls) == 1:
            raise OSError("disk on fire")
        if len(calls) == 2:
            return []  # the wrong number of outcomes
        return items

    coalesce: Coalescer[int, int] = Coalescer(flush)
    outcomes = await asyncio.gather(coalesce(1), coalesce(2), return_exceptions=True)
    assert [type(o) for o in outcomes] == [OSError, OSError]
    with pytest.raises(RuntimeError, match="wrong number"):
        await coalesce(3)
    assert await coalesce(4) == 4


async def test_a_cancelled_caller_still_has_its_item_flushed() -> None:
    """Cancelling a caller withdraws nothing: the item is written; drain waits for it."""
    flush = Flusher()
    flush.gate.clear()
    coalesce: Coalescer[int, int] = Coalescer(flush)
    caller = asyncio.ensure_future(coalesce(2))
    other = asyncio.ensure_future(coalesce(4))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    draining = asyncio.ensure_future(coalesce.drain())
    await asyncio.sleep(0)
    assert not draining.done()
    flush.gate.set()
    await draining
    assert flush.batches == [[2, 4]]
    assert await other == 40
    await coalesce.drain()  # nothing in flight: returns at once
