"""systemd's service notification protocol (``sd_notify(3)``): ``READY=1``, ``STOPPING=1``.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, the address of an ``AF_UNIX``
datagram socket: a path, or ``@name`` for the abstract namespace. Each notification is one
datagram of ``KEY=VALUE`` lines. Without ``NOTIFY_SOCKET`` (not under systemd, or another
``Type=``) every call does nothing, so the daemon needs no flag for it.

Written here rather than taken from a library: the protocol is one ``sendto``, and the
library on the index (``sdnotify``, last released in 2017) has no types and swallows every
error silently, where calsched wants one warning line for a notification that failed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

__all__ = ["NOTIFY_SOCKET", "Notifier"]

log = logging.getLogger("calsched.notify")

#: The environment variable systemd sets to the notification socket's address.
NOTIFY_SOCKET = "NOTIFY_SOCKET"

# A send that blocks longer than this (systemd stuck) is dropped: readiness is advisory,
# and the event loop must not wait on it.
_SEND_TIMEOUT_S = 1.0


class Notifier:
    """Sends notifications to the socket systemd named; a no-op without one."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._warned = False

    @classmethod
    def from_env(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET``; with ``unset``, the variable is removed so
        child processes (a command host) cannot notify in calsched's name."""
        env = os.environ if environ is None else environ
        address = env.pop(NOTIFY_SOCKET, None) if unset else env.get(NOTIFY_SOCKET)
        return cls(address)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (``READY=1``, with an optional ``STATUS=``)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        """Tell systemd a graceful stop has begun (``STOPPING=1``)."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line status ``systemctl status`` shows (``STATUS=``)."""
        return self.notify(f"STATUS={text}")

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; whether it was sent.

        A failure is logged once (systemd would then time the start out, which is the
        error an operator sees) and never raised: the daemon runs on.
        """
        if self.address is None or not fields:
            return False
        target = self.address
        if target.startswith("@"):  # the abstract namespace: a leading NUL byte
            target = "\0" + target[1:]
        elif not target.startswith("/"):
            self._warn(f"unsupported address {self.address!r}")
            return False
        message = "\n".join(fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto(message, target)
        except OSError as exc:
            self._warn(exc.strerror or type(exc).__name__)
            return False
        return True

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("systemd notification failed (%s): %s", NOTIFY_SOCKET, why)
