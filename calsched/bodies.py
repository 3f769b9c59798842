"""Reading a message body up to a byte cap: the one rule every adapter applies.

Requests to the control API and the reference backend, and answers from the calendar
backend and a webhook host's agent list, are all read through :func:`read_capped`: a
declared ``Content-Length`` over the cap refuses the body unread, and the bytes are counted
as they arrive, because a small (or missing) ``Content-Length`` may be a lie.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

__all__ = ["read_capped"]


async def read_capped(
    chunks: AsyncIterable[bytes], cap: int, *, declared: str | None = None
) -> bytes | None:
    """The body ``chunks`` carry, or ``None`` once it is known to exceed ``cap`` bytes.

    ``declared`` is the message's ``Content-Length`` header, if any: when it is a number
    over ``cap``, nothing is read. Reading stops at the first chunk past the cap, so the
    rest of an oversized body is never taken in.
    """
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return None
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)
