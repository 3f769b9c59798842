"""calsched.bodies: a body is read up to its cap, counted as it arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from calsched.bodies import read_capped


class Chunks:
    """An async stream of ``pieces`` that records how many were taken."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self.pieces = list(pieces)
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.taken += 1
            yield piece


async def test_a_body_within_the_cap_is_read_whole() -> None:
    """Every chunk is joined; a body of exactly the cap is allowed."""
    assert await read_capped(Chunks([b"ab", b"", b"cd"]), 4) == b"abcd"
    assert await read_capped(Chunks([]), 4) == b""


async def test_reading_stops_at_the_first_chunk_past_the_cap() -> None:
    """Past the cap the answer is None and the remaining chunks are never taken."""
    chunks = Chunks([b"abc", b"de", b"never", b"read"])
    assert await read_capped(chunks, 4) is None
    assert chunks.taken == 2


async def test_a_declared_length_over_the_cap_refuses_unread() -> None:
    """An honest Content-Length over the cap refuses without reading a byte."""
    chunks = Chunks([b"abc"])
    assert await read_capped(chunks, 4, declared="5") is None
    assert chunks.taken == 0


@pytest.mark.parametrize("declared", ["2", "", "-1", " 9", "nine"])
async def test_a_small_or_unreadable_declared_length_is_not_trusted(declared: str) -> None:
    """A Content-Length under the cap, or not a number, does not spare the counting."""
    assert await read_capped(Chunks([b"abc", b"de"]), 4, declared=declared) is None
    assert await read_capped(Chunks([b"abc"]), 4, declared=declared) == b"abc"
