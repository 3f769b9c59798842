"""A test seam: ``CALSCHED_FAILPOINT`` makes a real ``calsched run`` SIGKILL itself.

The crash harness (``tests/reliability/``) needs a daemon that dies *exactly* at one of
the scheduler's named seams (:data:`calsched.scheduler.FAILPOINTS`), not only at random
moments. ``CALSCHED_FAILPOINT=after_commit:17`` arms the 17th hit of ``after_commit``:
on that hit the process sends itself SIGKILL, so nothing after the seam runs, no
``finally`` block, no flush. Several seams may be armed at once, comma-separated
(``after_wake:2,after_outbox_send:5``); the first one reached kills the process.

This is a test seam, not a feature: only the daemon's wiring reads the variable, and
when it is unset :func:`failpoint_from_env` returns :func:`unarmed`, a no-op like the
scheduler's default, and the seams cost what they always did (one empty call). When it
is set the daemon logs a warning, so an armed production process is never silent. The configuration
(``calsched.config``) does not read it; its fields do not include it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

from calsched.errors import ConfigError
from calsched.scheduler import FAILPOINTS

__all__ = ["FAILPOINT_ENV", "Failpoint", "failpoint_from_env", "parse_failpoints", "unarmed"]

#: The environment variable the daemon reads; ``name:n[,name:n...]``.
FAILPOINT_ENV = "CALSCHED_FAILPOINT"


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def parse_failpoints(spec: str) -> dict[str, int]:
    """``"after_commit:17,after_wake:2"`` -> ``{"after_commit": 17, "after_wake": 2}``.

    Raises :class:`ConfigError` for an unknown seam or a count that is not a positive
    integer: a typo must not silently arm nothing.
    """
    armed: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, count = part.partition(":")
        if name not in FAILPOINTS:
            raise ConfigError(
                f"{FAILPOINT_ENV}: unknown failpoint {name!r} (known: {', '.join(FAILPOINTS)})"
            )
        hit = int(count) if sep and count.isdigit() else 0
        if hit < 1:
            raise ConfigError(f"{FAILPOINT_ENV}: {part!r} needs a hit count >= 1 (name:n)")
        armed[name] = hit
    return armed


class Failpoint:
    """The scheduler's ``failpoint=`` hook: counts hits per seam, kills on the armed one."""

    def __init__(self, armed: Mapping[str, int], *, kill: Callable[[], None] = _sigkill_self):
        self.armed = dict(armed)
        self.hits: dict[str, int] = dict.fromkeys(FAILPOINTS, 0)
        self._kill = kill

    def __call__(self, name: str) -> None:
        """One hit of seam ``name``; the armed hit kills the process."""
        self.hits[name] = self.hits.get(name, 0) + 1
        if self.armed.get(name) == self.hits[name]:
            self._kill()


def unarmed(name: str) -> None:
    """The hook when nothing is armed: a no-op, like the scheduler's own default."""


def failpoint_from_env(environ: Mapping[str, str] | None = None) -> Callable[[str], None]:
    """The hook :data:`FAILPOINT_ENV` arms: a :class:`Failpoint`, or :func:`unarmed`."""
    spec = (os.environ if environ is None else environ).get(FAILPOINT_ENV, "")
    armed = parse_failpoints(spec)
    return Failpoint(armed) if armed else unarmed
